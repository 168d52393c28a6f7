//! Finds the system UCX with pkg-config and generates bindings to `ucp/api/ucp.h`
//! (with the `bind` feature; without it there is nothing to do).

#[cfg(not(feature = "bind"))]
fn main() {}

#[cfg(feature = "bind")]
fn main() {
    use std::env;
    use std::path::PathBuf;

    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");
    let ucx = match pkg_config::Config::new().atleast_version("1.12").probe("ucx") {
        Ok(lib) => lib,
        Err(e) => panic!(
            "ucx-sys: UCX (ucp) was not found through pkg-config: {e}\n\
             Install the UCX development files (Debian/Ubuntu: `apt-get install libucx-dev`, \
             or run `ci/setup-ucx.sh`), or point PKG_CONFIG_PATH at the directory holding ucx.pc \
             of your UCX installation; or build rdask without the `ucx` feature."
        ),
    };
    let mut builder = bindgen::Builder::default()
        .header("wrapper.h")
        .allowlist_function("ucp_.*")
        .allowlist_function("ucs_status_string")
        .allowlist_type("ucp_.*")
        .allowlist_type("ucs_status_t")
        .allowlist_var("UCP_.*")
        .allowlist_var("UCS_.*")
        .rustified_enum("ucs_status_t")
        .default_enum_style(bindgen::EnumVariation::Consts)
        .prepend_enum_name(false)
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()));
    for dir in &ucx.include_paths {
        builder = builder.clang_arg(format!("-I{}", dir.display()));
    }
    let bindings = builder.generate().unwrap_or_else(|e| {
        panic!("ucx-sys: bindgen could not process ucp/api/ucp.h ({e}); is libclang installed (`libclang-dev`)?")
    });
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings.write_to_file(out.join("bindings.rs")).expect("write bindings.rs");
}
