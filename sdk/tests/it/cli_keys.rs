//! `mlbridge key new | import | address` as an operator runs them: keys only in encrypted files, never on the command
//! line, never overwritten.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn mlbridge(args: &[&str], stdin: &str) -> Output {
    // In a new session (setsid): no controlling terminal, so nothing can prompt on the terminal running the tests.
    let mut child = Command::new("setsid")
        .arg(env!("CARGO_BIN_EXE_mlbridge"))
        .args(args)
        .env_remove("MLBRIDGE_KEYSTORE_PASSWORD")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn keys_are_made_imported_and_read_back_from_encrypted_files() {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "correct horse\n").unwrap();
    let (pw, new) = (pw.to_str().unwrap(), dir.path().join("keys/operator.json"));
    let new = new.to_str().unwrap();

    let made = stdout(&mlbridge(&["key", "new", new, "--password-file", pw], ""));
    assert!(made.starts_with("0x") && made.len() == 42, "{made}");
    assert_eq!(stdout(&mlbridge(&["key", "address", new, "--password-file", pw], "")), made);
    let again = mlbridge(&["key", "new", new, "--password-file", pw], "");
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("never overwritten"));
    let keystore = std::fs::read_to_string(new).unwrap();
    assert!(keystore.contains("scrypt"), "{keystore}");

    // anvil's first dev key, from standard input.
    let imported = dir.path().join("payer.json");
    let imported = imported.to_str().unwrap();
    let key = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80\n";
    let address = stdout(&mlbridge(&["key", "import", imported, "--password-file", pw], key));
    assert_eq!(address, "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266");
    assert!(!std::fs::read_to_string(imported).unwrap().contains(&key[2..66]), "the key is stored encrypted");

    // A wrong password, or none (no terminal to ask at), is an error that says what to do; a bad key is refused
    // without being echoed.
    std::fs::write(dir.path().join("wrong"), "nope\n").unwrap();
    let wrong =
        mlbridge(&["key", "address", imported, "--password-file", dir.path().join("wrong").to_str().unwrap()], "");
    assert!(!wrong.status.success() && String::from_utf8_lossy(&wrong.stderr).contains("wrong password"));
    let none = mlbridge(&["key", "address", imported], "");
    assert!(!none.status.success(), "{}", String::from_utf8_lossy(&none.stdout));
    assert!(String::from_utf8_lossy(&none.stderr).contains("MLBRIDGE_KEYSTORE_PASSWORD"));
    let bad = dir.path().join("bad.json");
    let out = mlbridge(&["key", "import", bad.to_str().unwrap(), "--password-file", pw], "zzzz1234secretish\n");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not a secp256k1 private key") && !err.contains("zzzz"), "{err}");
    assert!(!bad.exists());
}
