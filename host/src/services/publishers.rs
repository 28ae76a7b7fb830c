//! Publisher keys: the Ed25519 signatures that let a module's new code keep its approval.
//! Owns the formats a module author and an admin handle (keys, signatures, the signed
//! message) and checking a signature against a pinned key; `runcell keygen` and
//! `runcell sign` use the same code, so what the CLI writes is what the server reads.
//!
//! The formats, which the README documents for those who sign with OpenSSL instead:
//! - the signed message is the ASCII text [`SIGNED_PREFIX`] followed by the 64 lowercase
//!   hex digits of the SHA-256 of the `.wasm` file (the module's content hash), so a
//!   signature names the exact bytes and cannot be mistaken for one made for another
//!   purpose with the same key;
//! - a signature travels as `ed25519:<key id>:<base64 of the 64-byte signature>`, in the
//!   `X-Runcell-Signature` header or the multipart field `signature`; the key id says
//!   which pinned key to check it against, so a corrupt signature can be told from one
//!   by a key the module does not trust;
//! - a public key is PEM (`BEGIN PUBLIC KEY`, as `openssl pkey -pubout` writes), or the
//!   base64 of its 32 bytes; a private key is PEM PKCS#8 (`BEGIN PRIVATE KEY`, as
//!   `openssl genpkey -algorithm ed25519` writes).
//!
//! Ed25519 comes from `ring`, already compiled into the server for TLS.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

use crate::domain::PublisherKey;

/// What a signature signs, before the content hash's hex digits.
pub(crate) const SIGNED_PREFIX: &str = "runcell-module-v1:sha256:";

/// The scheme word that starts a signature.
const SCHEME: &str = "ed25519";

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), before the 32 key bytes.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The DER prefix of an Ed25519 PKCS#8 v1 private key (RFC 8410), before the 32-byte seed.
const PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Why a key or signature could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct FormatError(String);

/// A signature as an upload carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Signature {
    /// The id of the key that (it says) made it.
    pub key_id: String,
    pub bytes: [u8; 64],
}

impl Signature {
    /// Reads `ed25519:<key id>:<base64>`, surrounding whitespace ignored.
    pub(crate) fn parse(text: &str) -> Result<Self, FormatError> {
        let bad = |why: &str| {
            FormatError(format!(
                "{why}; a signature reads `ed25519:<key id>:<base64 of 64 bytes>` (`runcell sign --key <file> module.wasm` prints one)"
            ))
        };
        let mut parts = text.trim().splitn(3, ':');
        let (Some(scheme), Some(key_id), Some(encoded)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("it has fewer than three `:`-separated parts"));
        };
        if scheme != SCHEME {
            return Err(bad(&format!("the scheme is `{scheme}`, not `{SCHEME}`")));
        }
        if key_id.len() != 16 || !key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the key id is not 16 hex digits"));
        }
        let decoded = BASE64
            .decode(encoded)
            .map_err(|err| bad(&format!("the signature is not base64 ({err})")))?;
        let bytes: [u8; 64] = decoded.try_into().map_err(|decoded: Vec<u8>| {
            bad(&format!("the signature is {} bytes, not 64", decoded.len()))
        })?;
        Ok(Self {
            key_id: key_id.to_ascii_lowercase(),
            bytes,
        })
    }

    /// Whether this signs the module whose content hash is `content_hash` under `key`.
    pub(crate) fn verifies(&self, key: &PublisherKey, content_hash: &str) -> bool {
        UnparsedPublicKey::new(&ED25519, &key.public_key)
            .verify(&signed_message(content_hash), &self.bytes)
            .is_ok()
    }
}

impl std::fmt::Display for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{SCHEME}:{}:{}", self.key_id, BASE64.encode(self.bytes))
    }
}

/// The bytes a signature over the module with `content_hash` signs.
fn signed_message(content_hash: &str) -> Vec<u8> {
    format!("{SIGNED_PREFIX}{}", content_hash.to_ascii_lowercase()).into_bytes()
}

/// The body of the PEM block labelled `label` in `text`, decoded; `None` if there is none.
fn pem_block(text: &str, label: &str) -> Option<Result<Vec<u8>, FormatError>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let Some(stop) = text[start..].find(&end) else {
        return Some(Err(FormatError(format!(
            "the PEM block has no `{end}` line"
        ))));
    };
    let body: String = text[start..start + stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    Some(
        BASE64
            .decode(body)
            .map_err(|err| FormatError(format!("the PEM block is not base64 ({err})"))),
    )
}

/// The 32 bytes of an Ed25519 public key given as PEM, or as the base64 of its 32 bytes
/// (or of its 44-byte DER SubjectPublicKeyInfo).
pub(crate) fn parse_public_key(text: &str) -> Result<Vec<u8>, FormatError> {
    let der = match pem_block(text, "PUBLIC KEY") {
        Some(der) => der?,
        None => BASE64.decode(text.trim()).map_err(|err| {
            FormatError(format!(
                "not a PEM public key, nor base64 ({err}); give the `.pub` file `runcell keygen` wrote, or `openssl pkey -pubout` output"
            ))
        })?,
    };
    let key = match der.len() {
        32 => der,
        44 if der.starts_with(&SPKI_PREFIX) => der[SPKI_PREFIX.len()..].to_vec(),
        _ => {
            return Err(FormatError(format!(
                "not an Ed25519 public key: {} bytes where 32 (or a 44-byte SubjectPublicKeyInfo) were expected",
                der.len()
            )));
        }
    };
    Ok(key)
}

/// The PEM text of an Ed25519 public key (SubjectPublicKeyInfo, as OpenSSL writes it).
pub(crate) fn public_key_pem(public_key: &[u8]) -> String {
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(public_key);
    pem("PUBLIC KEY", &der)
}

fn pem(label: &str, der: &[u8]) -> String {
    let encoded = BASE64.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in encoded.as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(line).unwrap_or_default());
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

/// A publisher's signing key, read from or written to a PEM PKCS#8 file.
pub(crate) struct SigningKey(Ed25519KeyPair);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SigningKey").field(&self.key_id()).finish()
    }
}

impl SigningKey {
    /// A new random key, and its PEM text (PKCS#8 v1, as OpenSSL writes it) to keep.
    pub(crate) fn generate() -> Result<(Self, String), FormatError> {
        let mut seed = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut seed)
            .map_err(|_| FormatError("the system's random source failed".into()))?;
        let pair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .map_err(|err| FormatError(format!("cannot make a key: {err}")))?;
        let mut der = PKCS8_PREFIX.to_vec();
        der.extend_from_slice(&seed);
        Ok((Self(pair), pem("PRIVATE KEY", &der)))
    }

    /// Reads a PEM `PRIVATE KEY` (PKCS#8 v1 or v2) holding an Ed25519 key.
    pub(crate) fn from_pem(text: &str) -> Result<Self, FormatError> {
        let der = pem_block(text, "PRIVATE KEY").ok_or_else(|| {
            FormatError(
                "no `-----BEGIN PRIVATE KEY-----` block; give the file `runcell keygen` wrote, or `openssl genpkey -algorithm ed25519` output".into(),
            )
        })??;
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map(Self)
            .map_err(|err| FormatError(format!("not an Ed25519 private key: {err}")))
    }

    pub(crate) fn public_key(&self) -> &[u8] {
        self.0.public_key().as_ref()
    }

    pub(crate) fn key_id(&self) -> String {
        PublisherKey::id_of(self.public_key())
    }

    /// Signs the module whose bytes are `wasm`.
    pub(crate) fn sign(&self, wasm: &[u8]) -> Signature {
        use sha2::Digest;
        let hash = hex::encode(sha2::Sha256::digest(wasm));
        let signature = self.0.sign(&signed_message(&hash));
        let mut bytes = [0u8; 64];
        bytes.copy_from_slice(signature.as_ref());
        Signature {
            key_id: self.key_id(),
            bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pinned(key: &SigningKey) -> PublisherKey {
        PublisherKey {
            id: key.key_id(),
            public_key: key.public_key().to_vec(),
            comment: String::new(),
            pinned_by: "admin".into(),
            pinned_at: 0,
        }
    }

    fn hash(wasm: &[u8]) -> String {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(wasm))
    }

    #[test]
    fn a_signature_verifies_for_its_bytes_and_key_only() {
        let (key, _) = SigningKey::generate().unwrap();
        let (other, _) = SigningKey::generate().unwrap();
        let signature = key.sign(b"module one");
        let parsed = Signature::parse(&signature.to_string()).unwrap();
        assert_eq!(parsed, signature);
        assert_eq!(parsed.key_id, key.key_id());
        assert!(parsed.verifies(&pinned(&key), &hash(b"module one")));
        assert!(!parsed.verifies(&pinned(&key), &hash(b"module two")));
        assert!(!parsed.verifies(&pinned(&other), &hash(b"module one")));
        let mut flipped = parsed.clone();
        flipped.bytes[10] ^= 1;
        assert!(!flipped.verifies(&pinned(&key), &hash(b"module one")));
    }

    #[test]
    fn keys_round_trip_through_their_files() {
        let (key, private_pem) = SigningKey::generate().unwrap();
        let read = SigningKey::from_pem(&private_pem).unwrap();
        assert_eq!(read.public_key(), key.public_key());
        let public_pem = public_key_pem(key.public_key());
        assert!(public_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(parse_public_key(&public_pem).unwrap(), key.public_key());
        assert_eq!(
            parse_public_key(&BASE64.encode(key.public_key())).unwrap(),
            key.public_key()
        );
    }

    /// A key pair and a signature made by OpenSSL 3.0 with the README's recipe
    /// (`openssl genpkey -algorithm ed25519`, `openssl pkey -pubout`, `openssl pkeyutl
    /// -sign -rawin` over `SIGNED_PREFIX` + the SHA-256 of `hello`): what OpenSSL
    /// writes, the server reads, and the CLI signs alike (Ed25519 is deterministic).
    #[test]
    fn openssl_keys_and_signatures_are_understood() {
        let private = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIJTHmR8dcmI+hplFxGQEw/oYj9cxNZ5DVEr7DdcazhjT\n-----END PRIVATE KEY-----\n";
        let public = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAJXx34ySCOxo2O1cuaKhpSZ6enf7KY2QwIAnGVTjVsKY=\n-----END PUBLIC KEY-----\n";
        let openssl_signature = "ed25519:ae4479c05a8cd6cc:J3LEdQzPizGzY4lopKNONRAAInoF677HckhA4s0XMU4SBr+TA9wxflfkFWdgO2QCXc3EuQMTaPD4b42TULe3AQ==";
        let public_key = parse_public_key(public).unwrap();
        assert_eq!(PublisherKey::id_of(&public_key), "ae4479c05a8cd6cc");
        let key = SigningKey::from_pem(private).unwrap();
        assert_eq!(key.public_key(), public_key);
        assert_eq!(public_key_pem(&public_key), public);
        let signature = Signature::parse(openssl_signature).unwrap();
        assert!(signature.verifies(&pinned(&key), &hash(b"hello")));
        assert_eq!(key.sign(b"hello").to_string(), openssl_signature);
    }

    #[test]
    fn malformed_signatures_and_keys_say_what_is_wrong() {
        let cases = [
            ("", "fewer than three"),
            ("rsa:0123456789abcdef:AAAA", "scheme is `rsa`"),
            ("ed25519:0123:AAAA", "16 hex digits"),
            ("ed25519:0123456789abcdef:!!!", "not base64"),
            ("ed25519:0123456789abcdef:AAAA", "3 bytes, not 64"),
        ];
        for (text, expected) in cases {
            let err = Signature::parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
        assert!(
            parse_public_key("AAAA")
                .unwrap_err()
                .to_string()
                .contains("3 bytes")
        );
        assert!(SigningKey::from_pem("not a key").is_err());
    }
}
