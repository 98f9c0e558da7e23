//! The validator key: an encrypted Ethereum keystore (the format `cast wallet import` and geth write), or a hex key
//! on devnets. The key never appears in logs.

use std::path::Path;

use alloy::signers::local::PrivateKeySigner;

use crate::config::ValidatorConfig;
use crate::{Error, Result};

/// Load the validator key from `config`: `keystore` (+ `password_file`) or `key`.
pub fn load(config: &ValidatorConfig) -> Result<PrivateKeySigner> {
    match (&config.keystore, &config.key) {
        (Some(path), _) => from_keystore(path, config.password_file.as_deref()),
        (None, Some(hex)) => hex.trim().parse().map_err(|_| Error::Key("not a secp256k1 key in hex (64 hex digits)".into())),
        (None, None) => Err(Error::Key(
            "no key configured: give --keystore FILE (with --password-file) or `keystore` in the config; --key only on devnets"
                .into(),
        )),
    }
}

fn from_keystore(path: &Path, password_file: Option<&Path>) -> Result<PrivateKeySigner> {
    let source = mlbridge_sdk::keys::PasswordSource::from_file(password_file);
    mlbridge_sdk::keys::load(path, &source).map_err(|e| Error::Key(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keystore_round_trip_and_wrong_password() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = rand::thread_rng();
        // The name returned is the key's uuid; the file is written under the name given.
        let (signer, _uuid) =
            PrivateKeySigner::new_keystore(dir.path(), &mut rng, "secret", Some("validator.json")).unwrap();
        std::fs::write(dir.path().join("pw"), "secret\n").unwrap();
        let config = ValidatorConfig {
            keystore: Some(dir.path().join("validator.json")),
            password_file: Some(dir.path().join("pw")),
            ..ValidatorConfig::default()
        };
        assert_eq!(load(&config).unwrap().address(), signer.address());
        std::fs::write(dir.path().join("pw"), "wrong\n").unwrap();
        assert!(load(&config).is_err());
        let none = ValidatorConfig::default();
        assert!(load(&none).unwrap_err().to_string().contains("--keystore"));
    }
}
