//! Keys at rest: encrypted Ethereum keystore files (the v3 JSON of geth, `cast wallet` and alloy; scrypt + AES-128-CTR),
//! and where their passwords come from. Operator, validator and payer keys live in these files; a private key is
//! never taken on the command line and never logged (devnets alone pass anvil's well-known keys, and say so).
//!
//! A password comes from, in order: a file (its first line), `$MLBRIDGE_KEYSTORE_PASSWORD`, or a prompt on the
//! terminal (not echoed).

use std::path::{Path, PathBuf};

use alloy::signers::local::PrivateKeySigner;

use crate::{Error, Result};

/// The environment variable a keystore password may come from.
pub const PASSWORD_ENV: &str = "MLBRIDGE_KEYSTORE_PASSWORD";

/// Where a keystore's password comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum PasswordSource {
    /// The first line of this file.
    File(PathBuf),
    /// `$MLBRIDGE_KEYSTORE_PASSWORD`, else a prompt on the terminal.
    #[default]
    EnvOrPrompt,
}

impl PasswordSource {
    /// A file when one is given, else the environment or a prompt.
    pub fn from_file(file: Option<&Path>) -> Self {
        file.map_or(Self::EnvOrPrompt, |f| Self::File(f.to_owned()))
    }

    /// Read the password. `new` asks twice at a prompt (a new keystore's password must not be mistyped) and refuses
    /// an empty one.
    pub fn read(&self, what: &str, new: bool) -> Result<String> {
        let password = match self {
            Self::File(path) => std::fs::read_to_string(path)
                .map_err(|e| key_error(format!("cannot read the password file {}: {e}", path.display())))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
            Self::EnvOrPrompt => match std::env::var(PASSWORD_ENV) {
                Ok(p) => p,
                Err(_) => prompt(what, new)?,
            },
        };
        if new && password.is_empty() {
            return Err(key_error("the password is empty; a keystore needs one".into()));
        }
        Ok(password)
    }
}

fn key_error(reason: String) -> Error {
    Error::Key(reason)
}

fn prompt(what: &str, twice: bool) -> Result<String> {
    use std::io::IsTerminal;
    let no_tty = |e: std::io::Error| {
        key_error(format!("cannot prompt for the password of {what} ({e}); give a password file or ${PASSWORD_ENV}"))
    };
    // Only someone typing at a terminal is asked: a service, a pipe or a background job gets the error, never a
    // prompt that could hang (a key piped in needs a password file or the environment variable).
    if !std::io::stdin().is_terminal() {
        return Err(no_tty(std::io::Error::other("standard input is not a terminal")));
    }
    let first = rpassword::prompt_password(format!("Password for {what}: ")).map_err(no_tty)?;
    if twice && rpassword::prompt_password("Repeat it: ").map_err(no_tty)? != first {
        return Err(key_error("the two passwords differ".into()));
    }
    Ok(first)
}

/// Where a new keystore is written first: a fresh private folder beside `path` (made by this call, owner-only, so
/// nobody else can plant or read the file alloy writes there), and the file's name in it.
fn staging(path: &Path) -> Result<(PathBuf, String)> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned();
    if !dir.exists() {
        std::fs::create_dir_all(&dir).map_err(|e| key_error(format!("cannot create {}: {e}", dir.display())))?;
        private(&dir, 0o700)?;
    }
    let base = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| key_error(format!("{} is not a file path", path.display())))?;
    let nonce: u64 = rand::random();
    let staging = dir.join(format!(".{base}.{nonce:016x}.new"));
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    // `create`, not `create_all`: fails if anything is already there.
    builder.create(&staging).map_err(|e| key_error(format!("cannot create {}: {e}", staging.display())))?;
    Ok((staging, base.to_owned()))
}

#[cfg(unix)]
fn private(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| key_error(format!("cannot restrict {} to its owner: {e}", path.display())))
}

#[cfg(not(unix))]
fn private(_: &Path, _: u32) -> Result<()> {
    Ok(())
}

/// Move the keystore written at `staging/name` to `path`, readable by its owner only, failing (atomically) if
/// `path` exists: a keystore is never overwritten. The staging folder is removed either way.
fn publish(staging: &Path, name: &str, path: &Path) -> Result<()> {
    let written = staging.join(name);
    let linked = private(&written, 0o600).and_then(|()| {
        std::fs::hard_link(&written, path).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                key_error(format!("{} exists; a keystore is never overwritten", path.display()))
            }
            _ => key_error(format!("cannot write {}: {e}", path.display())),
        })
    });
    let _ = std::fs::remove_dir_all(staging);
    linked
}

/// Make a new random key and write it encrypted to `path` (which must not exist).
pub fn create(path: &Path, password: &str) -> Result<PrivateKeySigner> {
    if path.exists() {
        return Err(key_error(format!("{} exists; a keystore is never overwritten", path.display())));
    }
    let (dir, name) = staging(path)?;
    let made = PrivateKeySigner::new_keystore(&dir, &mut rand::thread_rng(), password, Some(&name));
    let (signer, _) = made.map_err(|e| {
        let _ = std::fs::remove_dir_all(&dir);
        key_error(format!("cannot write {}: {e}", path.display()))
    })?;
    publish(&dir, &name, path)?;
    Ok(signer)
}

/// Write an existing key (hex, with or without `0x`) encrypted to `path` (which must not exist).
pub fn import(path: &Path, key_hex: &str, password: &str) -> Result<PrivateKeySigner> {
    // The parser's message could quote part of the key: never pass it on.
    let signer: PrivateKeySigner = key_hex
        .trim()
        .parse()
        .map_err(|_| key_error("that is not a secp256k1 private key in hex (64 hex digits)".into()))?;
    if path.exists() {
        return Err(key_error(format!("{} exists; a keystore is never overwritten", path.display())));
    }
    let (dir, name) = staging(path)?;
    PrivateKeySigner::encrypt_keystore(&dir, &mut rand::thread_rng(), signer.to_bytes(), password, Some(&name))
        .map_err(|e| {
            let _ = std::fs::remove_dir_all(&dir);
            key_error(format!("cannot write {}: {e}", path.display()))
        })?;
    publish(&dir, &name, path)?;
    Ok(signer)
}

/// Open the keystore at `path` with `password`.
pub fn open(path: &Path, password: &str) -> Result<PrivateKeySigner> {
    PrivateKeySigner::decrypt_keystore(path, password)
        .map_err(|e| key_error(format!("cannot open the keystore {}: {e} (wrong password?)", path.display())))
}

/// Open the keystore at `path`, reading its password from `source`.
pub fn load(path: &Path, source: &PasswordSource) -> Result<PrivateKeySigner> {
    let password = source.read(&path.display().to_string(), false)?;
    open(path, &password)
}

#[cfg(test)]
mod tests {
    use alloy::primitives::Address;

    use super::*;

    #[test]
    fn keys_round_trip_through_keystores_and_are_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/operator.json");
        let made = create(&path, "secret").unwrap();
        assert_eq!(open(&path, "secret").unwrap().address(), made.address());
        assert!(open(&path, "wrong").unwrap_err().to_string().contains("wrong password"));
        assert!(create(&path, "secret").unwrap_err().to_string().contains("never overwritten"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("scrypt") && !text.contains(&alloy::hex::encode(made.to_bytes())), "encrypted");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!((mode(&path), mode(path.parent().unwrap())), (0o600, 0o700), "owner only");
        }
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "no temporary file left");
        // A file that appears between the check and the move is not overwritten either (the move is a hard link).
        let (staged, name) = staging(&path).unwrap();
        std::fs::write(staged.join(&name), "{}").unwrap();
        assert!(publish(&staged, &name, &path).unwrap_err().to_string().contains("never overwritten"));
        assert_eq!(open(&path, "secret").unwrap().address(), made.address(), "the first keystore is intact");
        assert!(!staged.exists());

        // anvil's first dev key, imported.
        let key = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
        let imported = dir.path().join("dev.json");
        let signer = import(&imported, key, "pw").unwrap();
        let anvil0: Address = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266".parse().unwrap();
        assert_eq!((signer.address(), open(&imported, "pw").unwrap().address()), (anvil0, anvil0));
        assert!(import(&dir.path().join("x.json"), "not a key", "pw").is_err());

        let file = dir.path().join("password");
        std::fs::write(&file, "pw\nignored").unwrap();
        assert_eq!(load(&imported, &PasswordSource::File(file)).unwrap().address(), anvil0);
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "").unwrap();
        assert!(PasswordSource::File(empty).read("k", true).is_err(), "a new keystore needs a password");
    }
}
