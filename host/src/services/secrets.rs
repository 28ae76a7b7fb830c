//! Secret job configuration, endpoint headers and alert channels' signing keys at rest:
//! AES-256-GCM under a key the database never holds (from the configuration, or a file
//! in the data directory). Each sealed value is bound to the job and key, the endpoint
//! and header, or the channel it belongs to (associated data), so a ciphertext copied
//! onto another row, or under another name, does not open.

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;

/// Marks the format of a sealed value, so a future format can sit beside this one.
const FORMAT: &str = "v1:";
const NONCE_BYTES: usize = 12;
pub(crate) const KEY_BYTES: usize = 32;

/// Seals and opens secret values. The key never leaves this type.
#[derive(Clone)]
pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(***)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("the secret key must be {KEY_BYTES} bytes (base64: 44 characters); it is {0}")]
    BadKey(usize),
    /// Says nothing of where the text went wrong: that would quote part of the key.
    #[error("the key is not base64 text")]
    NotBase64,
    /// Wrong key, tampered ciphertext, or a value moved from another job or key.
    #[error("a sealed value does not open with this server's secret key")]
    DoesNotOpen,
}

/// What a job's sealed setting is bound to.
fn associated_data(job_id: &str, key: &str) -> Vec<u8> {
    format!("runcell:job-config:{job_id}:{key}").into_bytes()
}

/// What an endpoint's sealed header is bound to: never the same text as a job's, so a
/// value cannot be moved between the two either.
fn header_binding(endpoint_id: &str, header: &str) -> Vec<u8> {
    format!("runcell:endpoint-header:{endpoint_id}:{header}").into_bytes()
}

/// What an alert channel's sealed signing key is bound to.
fn channel_binding(channel_id: &str) -> Vec<u8> {
    format!("runcell:alert-channel:{channel_id}").into_bytes()
}

impl SecretBox {
    pub fn new(key: &[u8]) -> Result<Self, SecretError> {
        let cipher = Aes256Gcm::new_from_slice(key).map_err(|_| SecretError::BadKey(key.len()))?;
        Ok(Self { cipher })
    }

    /// A key given as base64 text (`RUNCELL_SECRET_KEY`).
    pub fn from_base64(text: &str) -> Result<Self, SecretError> {
        let key = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| SecretError::NotBase64)?;
        Self::new(&key)
    }

    /// A fresh random key as base64, for a data directory's key file.
    pub fn generate_key() -> String {
        let key = aes_gcm::Key::<Aes256Gcm>::generate();
        base64::engine::general_purpose::STANDARD.encode(key)
    }

    pub fn seal(&self, job_id: &str, key: &str, plaintext: &str) -> String {
        self.seal_bound(&associated_data(job_id, key), plaintext)
    }

    pub fn open(&self, job_id: &str, key: &str, sealed: &str) -> Result<String, SecretError> {
        self.open_bound(&associated_data(job_id, key), sealed)
    }

    /// Seals the value of header `header` of endpoint `endpoint_id`.
    pub fn seal_header(&self, endpoint_id: &str, header: &str, plaintext: &str) -> String {
        self.seal_bound(&header_binding(endpoint_id, header), plaintext)
    }

    pub fn open_header(
        &self,
        endpoint_id: &str,
        header: &str,
        sealed: &str,
    ) -> Result<String, SecretError> {
        self.open_bound(&header_binding(endpoint_id, header), sealed)
    }

    /// Seals the HMAC key of alert channel `channel_id`.
    pub fn seal_channel_secret(&self, channel_id: &str, plaintext: &str) -> String {
        self.seal_bound(&channel_binding(channel_id), plaintext)
    }

    pub fn open_channel_secret(
        &self,
        channel_id: &str,
        sealed: &str,
    ) -> Result<String, SecretError> {
        self.open_bound(&channel_binding(channel_id), sealed)
    }

    fn seal_bound(&self, aad: &[u8], plaintext: &str) -> String {
        let nonce = Nonce::generate();
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad,
                },
            )
            .expect("AES-GCM encryption of an in-memory value cannot fail");
        let mut sealed = nonce.to_vec();
        sealed.extend_from_slice(&ciphertext);
        format!("{FORMAT}{}", STANDARD_NO_PAD.encode(sealed))
    }

    fn open_bound(&self, aad: &[u8], sealed: &str) -> Result<String, SecretError> {
        let bytes = sealed
            .strip_prefix(FORMAT)
            .and_then(|body| STANDARD_NO_PAD.decode(body).ok())
            .filter(|bytes| bytes.len() > NONCE_BYTES)
            .ok_or(SecretError::DoesNotOpen)?;
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        let nonce = Nonce::try_from(nonce).map_err(|_| SecretError::DoesNotOpen)?;
        let plaintext = self
            .cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| SecretError::DoesNotOpen)?;
        String::from_utf8(plaintext).map_err(|_| SecretError::DoesNotOpen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> SecretBox {
        SecretBox::new(&[5; KEY_BYTES]).unwrap()
    }

    #[test]
    fn a_sealed_value_opens_for_its_job_and_key_only() {
        let sealed = sealer().seal("job-1", "apiKey", "s3cret-value");
        assert!(sealed.starts_with("v1:"));
        assert!(!sealed.contains("s3cret"));
        assert_eq!(
            sealer().open("job-1", "apiKey", &sealed).unwrap(),
            "s3cret-value"
        );
        assert_eq!(
            sealer().open("job-2", "apiKey", &sealed),
            Err(SecretError::DoesNotOpen)
        );
        assert_eq!(
            sealer().open("job-1", "otherKey", &sealed),
            Err(SecretError::DoesNotOpen)
        );
    }

    #[test]
    fn another_key_or_a_flipped_bit_does_not_open() {
        let sealed = sealer().seal("job-1", "k", "value");
        let other = SecretBox::new(&[6; KEY_BYTES]).unwrap();
        assert_eq!(
            other.open("job-1", "k", &sealed),
            Err(SecretError::DoesNotOpen)
        );
        let mut tampered = sealed.into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(
            sealer().open("job-1", "k", &tampered),
            Err(SecretError::DoesNotOpen)
        );
    }

    #[test]
    fn a_sealed_header_opens_for_its_endpoint_and_header_only_never_as_a_job_setting() {
        let sealed = sealer().seal_header("ep-1", "authorization", "Bearer t0ken");
        assert_eq!(
            sealer()
                .open_header("ep-1", "authorization", &sealed)
                .unwrap(),
            "Bearer t0ken"
        );
        assert!(
            sealer()
                .open_header("ep-2", "authorization", &sealed)
                .is_err()
        );
        assert!(sealer().open_header("ep-1", "x-api-key", &sealed).is_err());
        assert!(sealer().open("ep-1", "authorization", &sealed).is_err());
    }

    #[test]
    fn a_sealed_channel_key_opens_for_its_channel_only() {
        let sealed = sealer().seal_channel_secret("ch-1", "hmac-key");
        assert_eq!(
            sealer().open_channel_secret("ch-1", &sealed).unwrap(),
            "hmac-key"
        );
        assert!(sealer().open_channel_secret("ch-2", &sealed).is_err());
        assert!(sealer().open_header("ch-1", "secret", &sealed).is_err());
    }

    #[test]
    fn sealing_twice_gives_different_ciphertexts() {
        assert_ne!(sealer().seal("j", "k", "v"), sealer().seal("j", "k", "v"));
    }

    #[test]
    fn keys_must_be_32_bytes_of_base64() {
        assert_eq!(
            SecretBox::new(&[1; 16]).unwrap_err(),
            SecretError::BadKey(16)
        );
        assert!(matches!(
            SecretBox::from_base64("not base64!"),
            Err(SecretError::NotBase64)
        ));
        let generated = SecretBox::generate_key();
        SecretBox::from_base64(&generated).unwrap();
    }
}
