//! Loading the ONNX Runtime shared library.
//!
//! We load `libonnxruntime.so` at run time (ort's `load-dynamic`) from the PyPI `onnxruntime` wheel that
//! `scripts/setup` installs into the project's `.venv`. `ort::init()` without a library path panics, so every path
//! here goes through [`ort::init_from`] and turns failures into [`Error`]s that say how to fix them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ort::environment::Environment;

use crate::{Error, Result};

/// Environment variable naming the ONNX Runtime library (the same one `ort` itself reads).
pub const ORT_DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// A loaded ONNX Runtime: the library and its process-wide environment.
#[derive(Debug)]
pub struct OnnxRuntime {
    env: Environment,
    library: PathBuf,
}

static RUNTIME: Mutex<Option<Arc<OnnxRuntime>>> = Mutex::new(None);

impl OnnxRuntime {
    /// Load ONNX Runtime once per process: from `explicit`, else `$ORT_DYLIB_PATH`, else the project's `.venv`
    /// found by walking up from the current directory and from the executable. Later calls return the same runtime.
    pub fn init(explicit: Option<&Path>) -> Result<Arc<Self>> {
        let mut slot = RUNTIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(rt) = slot.as_ref() {
            return Ok(rt.clone());
        }
        let library = locate(explicit)?;
        let load_err = |reason: String| Error::OnnxRuntimeLoad { path: library.clone(), reason };
        let builder = ort::init_from(&library).map_err(|e| load_err(e.to_string()))?;
        let env = builder.with_name("mlbridge").build().map_err(|e| load_err(e.to_string()))?;
        tracing::info!(target: "node::inference", library = %library.display(), "ONNX Runtime loaded");
        let rt = Arc::new(Self { env, library });
        *slot = Some(rt.clone());
        Ok(rt)
    }

    /// The library file in use.
    pub fn library(&self) -> &Path {
        &self.library
    }

    pub(crate) fn env(&self) -> &Environment {
        &self.env
    }
}

/// Find the ONNX Runtime library without loading it. A path given explicitly (argument or `$ORT_DYLIB_PATH`) must
/// exist: we never fall back silently from what the operator asked for.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf> {
    let from_env = std::env::var_os(ORT_DYLIB_ENV).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(asked) = explicit.map(Path::to_path_buf).or(from_env) {
        return if asked.is_file() { Ok(asked) } else { Err(Error::OnnxRuntimeNotFound { searched: vec![asked] }) };
    }
    let mut starts = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        starts.push(cwd);
    }
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)) {
        starts.push(exe_dir);
    }
    let mut searched = Vec::new();
    for start in starts {
        if let Some(found) = start.ancestors().find_map(|dir| find_in_venv(&dir.join(".venv").join("lib"))) {
            return Ok(found);
        }
        searched.push(start.join(".venv (and in every parent folder)"));
    }
    Err(Error::OnnxRuntimeNotFound { searched })
}

/// `<venv>/lib/python3.*/site-packages/onnxruntime/capi/libonnxruntime.so.<version>`, newest version first.
fn find_in_venv(venv_lib: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(venv_lib)
        .ok()?
        .flatten()
        .map(|py| py.path().join("site-packages/onnxruntime/capi"))
        .filter_map(|capi| std::fs::read_dir(capi).ok())
        .flatten()
        .flatten()
        .map(|entry| entry.path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so")))
        .collect();
    found.sort();
    found.pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_missing_path_is_an_error_not_a_fallback() {
        let err = locate(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
        assert!(matches!(err, Error::OnnxRuntimeNotFound { .. }));
        let msg = err.to_string();
        assert!(msg.contains("/nonexistent/libonnxruntime.so") && msg.contains("scripts/setup"), "{msg}");
    }

    #[test]
    fn venv_layout_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let capi = dir.path().join("lib/python3.11/site-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap();
        std::fs::write(capi.join("libonnxruntime.so.1.32.0"), b"").unwrap();
        std::fs::write(capi.join("onnxruntime_pybind11_state.so"), b"").unwrap();
        assert_eq!(find_in_venv(&dir.path().join("lib")).unwrap(), capi.join("libonnxruntime.so.1.32.0"));
    }
}
