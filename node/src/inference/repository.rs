//! The model repository: `root/<name>/<version>/{config.toml, model.onnx}`, like Triton's.
//!
//! [`ModelRepository::open`] reads every config (cheap, no ONNX); [`ModelRepository::load`] verifies a model file's
//! sha256 against its config (the model id everybody signs over) and creates its session.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mlbridge_sdk::ModelId;

use super::config::ModelConfig;
use super::model::{LoadedModel, read_model_file};
use super::runtime::OnnxRuntime;
use crate::{Error, Result};

/// File name of a model inside its version folder.
pub const MODEL_FILE: &str = "model.onnx";

/// The configs of every model version under a root folder.
#[derive(Debug, Clone)]
pub struct ModelRepository {
    root: PathBuf,
    /// (name, version) -> config.
    configs: BTreeMap<(String, u64), ModelConfig>,
}

impl ModelRepository {
    /// Read every `config.toml` under `root`. Fails on the first malformed config, naming it.
    pub fn open(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::RepositoryNotFound(root.to_owned()));
        }
        let mut configs = BTreeMap::new();
        let mut seen: BTreeMap<ModelId, String> = BTreeMap::new();
        for model_dir in sorted_subdirs(root)? {
            for version_dir in sorted_subdirs(&model_dir)? {
                if !version_dir.join("config.toml").is_file() {
                    continue;
                }
                let config = ModelConfig::load(&version_dir)?;
                if let Some(first) = seen.insert(config.sha256, config.key()) {
                    return Err(Error::DuplicateModelId { first, second: config.key(), id: config.sha256 });
                }
                configs.insert((config.name.clone(), config.version), config);
            }
        }
        Ok(Self { root: root.to_owned(), configs })
    }

    /// The repository folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every model version, by name then version.
    pub fn configs(&self) -> impl Iterator<Item = &ModelConfig> {
        self.configs.values()
    }

    /// A model's config: the given version, or the highest version when `None` (Triton's "latest" policy).
    pub fn config(&self, name: &str, version: Option<u64>) -> Result<&ModelConfig> {
        let found = match version {
            Some(v) => self.configs.get(&(name.to_owned(), v)),
            None => self.configs.range((name.to_owned(), 0)..=(name.to_owned(), u64::MAX)).next_back().map(|(_, c)| c),
        };
        found.ok_or_else(|| Error::UnknownModel { name: name.to_owned(), version })
    }

    /// Folder of a model version.
    pub fn version_dir(&self, config: &ModelConfig) -> PathBuf {
        self.root.join(&config.name).join(config.version.to_string())
    }

    /// Verify the model file's sha256 and create its ONNX Runtime session. Blocking (hashing, graph optimisation).
    pub fn load(&self, runtime: &OnnxRuntime, name: &str, version: Option<u64>) -> Result<LoadedModel> {
        let config = self.config(name, version)?.clone();
        self.load_config(runtime, config)
    }

    /// Like [`Self::load`], with a config the caller may have adjusted (thread counts). Blocking.
    pub fn load_config(&self, runtime: &OnnxRuntime, config: ModelConfig) -> Result<LoadedModel> {
        let bytes = self.read_verified(&config)?;
        LoadedModel::from_bytes(runtime, config.clone(), config.sha256, &bytes)
    }

    /// The bytes of a model version's file, checked against the sha256 its config records. Blocking.
    pub fn read_verified(&self, config: &ModelConfig) -> Result<Vec<u8>> {
        let path = self.version_dir(config).join(MODEL_FILE);
        let bytes = read_model_file(&config.key(), &path)?;
        let actual = ModelId::of_bytes(&bytes);
        if actual != config.sha256 {
            return Err(Error::HashMismatch {
                model: config.key(),
                path,
                expected: config.sha256.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(bytes)
    }
}

fn sorted_subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let io = |source| Error::Sdk(mlbridge_sdk::Error::Io { path: dir.to_owned(), source });
    let mut dirs: Vec<PathBuf> =
        std::fs::read_dir(dir).map_err(io)?.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
    dirs.sort();
    Ok(dirs)
}
