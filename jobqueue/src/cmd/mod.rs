//! One module per subcommand of `rdask-jobqueue` (`run`, `mpi` and `config` live in
//! [`crate::srun`], [`crate::mpi`] and [`crate::config`]); [`crate::run`] dispatches.

pub(crate) mod adapt;
pub(crate) mod cancel;
pub(crate) mod down;
pub(crate) mod events;
pub(crate) mod job_script;
pub(crate) mod output;
pub(crate) mod scale;
pub(crate) mod scheduler;
pub(crate) mod status;
pub(crate) mod submit;
pub(crate) mod up;
pub(crate) mod wait;
pub(crate) mod worker;
