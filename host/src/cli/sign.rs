//! `runcell keygen` and `runcell sign`: a module author's publisher key and the signature
//! that lets a new version keep its module's approval (see `services::publishers` for
//! the formats). Local: no server, no database.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;

use super::ExitStatus;
use crate::services::publishers::{SigningKey, public_key_pem};

#[derive(Debug, Args)]
pub(super) struct KeygenArgs {
    /// Where to write the private key (PEM, mode 0600); the public key goes beside it
    /// with `.pub` appended. Refuses to overwrite either.
    #[arg(long, default_value = "publisher.pem")]
    out: PathBuf,
}

#[derive(Debug, Args)]
pub(super) struct SignArgs {
    /// The private key (PEM PKCS#8, from `runcell keygen` or `openssl genpkey -algorithm
    /// ed25519`).
    #[arg(long)]
    key: PathBuf,
    /// The module file to sign: the exact bytes that will be uploaded.
    module: PathBuf,
}

/// Makes a key pair and prints the public key and its id for the admin who pins it.
pub(super) fn keygen(args: KeygenArgs) -> ExitStatus {
    let public_path = PathBuf::from(format!("{}.pub", args.out.display()));
    for path in [&args.out, &public_path] {
        if path.exists() {
            eprintln!(
                "error: {} exists; choose another --out or move it away",
                path.display()
            );
            return ExitStatus::Usage;
        }
    }
    let (key, private_pem) = match SigningKey::generate() {
        Ok(made) => made,
        Err(err) => {
            eprintln!("error: {err}");
            return ExitStatus::Environment;
        }
    };
    let public_pem = public_key_pem(key.public_key());
    if let Err(err) = write_private(&args.out, &private_pem)
        .and_then(|()| std::fs::write(&public_path, &public_pem))
    {
        eprintln!("error: cannot write the key: {err}");
        return ExitStatus::Environment;
    }
    eprintln!(
        "wrote {} (keep it secret: it is what CI signs with) and {}",
        args.out.display(),
        public_path.display()
    );
    eprintln!(
        "key id {}; an admin pins it with POST /api/v1/modules/<module>/publisher-keys {{\"publicKey\": <the .pub file's text>}}",
        key.key_id()
    );
    print!("{public_pem}");
    ExitStatus::Success
}

/// Writes the private key readable by its owner alone, never over an existing file.
fn write_private(path: &Path, pem: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(pem.as_bytes())
}

/// Prints the signature of a module file, for the `X-Runcell-Signature` header.
pub(super) fn sign(args: SignArgs) -> ExitStatus {
    let key = match std::fs::read_to_string(&args.key) {
        Ok(text) => match SigningKey::from_pem(&text) {
            Ok(key) => key,
            Err(err) => {
                eprintln!("error: {}: {err}", args.key.display());
                return ExitStatus::Usage;
            }
        },
        Err(err) => {
            eprintln!("error: cannot read {}: {err}", args.key.display());
            return ExitStatus::Environment;
        }
    };
    let wasm = match std::fs::read(&args.module) {
        Ok(wasm) => wasm,
        Err(err) => {
            eprintln!("error: cannot read {}: {err}", args.module.display());
            return ExitStatus::Environment;
        }
    };
    println!("{}", key.sign(&wasm));
    ExitStatus::Success
}
