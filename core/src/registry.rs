//! Functions that workers can run, registered by name in the user's program.
//!
//! The user's binary doubles as the worker (see [`crate::worker_main_if_requested`]),
//! so the same registry exists in the client and in every worker.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A registered function: encoded arguments and inputs in, encoded result out.
pub type TaskFn = dyn Fn(&[u8], &[Bytes]) -> Result<Bytes, String> + Send + Sync;

/// Named functions.
#[derive(Clone, Default)]
pub struct Registry {
    fns: HashMap<String, Arc<TaskFn>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.fns.keys().collect();
        names.sort();
        f.debug_struct("Registry").field("functions", &names).finish()
    }
}

fn encode<R: Serialize>(r: &R) -> Result<Bytes, String> {
    postcard::to_stdvec(r).map(Bytes::from).map_err(|e| format!("cannot encode the result: {e}"))
}

fn decode<A: DeserializeOwned>(what: &str, b: &[u8]) -> Result<A, String> {
    postcard::from_bytes(b).map_err(|e| format!("cannot decode {what} as {}: {e}", std::any::type_name::<A>()))
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers `f(args) -> result` for tasks without inputs.
    pub fn register<A, R, F>(&mut self, name: &str, f: F) -> &mut Registry
    where
        A: DeserializeOwned,
        R: Serialize,
        F: Fn(A) -> R + Send + Sync + 'static,
    {
        self.register_raw(name, move |args, _inputs| encode(&f(decode("the arguments", args)?)))
    }

    /// Registers `f(args, inputs) -> result`, where `inputs` are the results of the
    /// task's dependencies, in the order they were given, all of type `I`.
    pub fn register_with_inputs<A, I, R, F>(&mut self, name: &str, f: F) -> &mut Registry
    where
        A: DeserializeOwned,
        I: DeserializeOwned,
        R: Serialize,
        F: Fn(A, Vec<I>) -> R + Send + Sync + 'static,
    {
        self.register_raw(name, move |args, inputs| {
            let a = decode("the arguments", args)?;
            let ins = inputs.iter().map(|b| decode("an input", b)).collect::<Result<Vec<I>, _>>()?;
            encode(&f(a, ins))
        })
    }

    /// Registers a function on raw bytes: the result is kept and moved as it is, without encoding.
    pub fn register_raw<F>(&mut self, name: &str, f: F) -> &mut Registry
    where
        F: Fn(&[u8], &[Bytes]) -> Result<Bytes, String> + Send + Sync + 'static,
    {
        self.fns.insert(name.to_string(), Arc::new(f));
        self
    }

    /// Looks a function up.
    pub fn get(&self, name: &str) -> Option<Arc<TaskFn>> {
        self.fns.get(name).cloned()
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.fns.contains_key(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_functions_round_trip() {
        let mut r = Registry::new();
        r.register("inc", |x: u64| x + 1);
        r.register_with_inputs("sum", |k: u64, xs: Vec<u64>| k * xs.iter().sum::<u64>());
        let out = r.get("inc").unwrap()(&postcard::to_stdvec(&41u64).unwrap(), &[]).unwrap();
        assert_eq!(postcard::from_bytes::<u64>(&out).unwrap(), 42);
        let ins: Vec<Bytes> = [1u64, 2, 3].iter().map(|x| Bytes::from(postcard::to_stdvec(x).unwrap())).collect();
        let out = r.get("sum").unwrap()(&postcard::to_stdvec(&2u64).unwrap(), &ins).unwrap();
        assert_eq!(postcard::from_bytes::<u64>(&out).unwrap(), 12);
        let err = r.get("inc").unwrap()(&[], &[]).unwrap_err();
        assert!(err.contains("cannot decode the arguments as u64"), "{err}");
    }
}
