//! Access tokens: JWTs signed with HS256 and nothing else. The algorithm is pinned on
//! both sides, so `alg: none` and algorithm confusion (a token signed with some other
//! algorithm the library also knows) are refused before the signature is looked at.
//! Time is checked against the service's clock, not the library's, so tests can move it.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::domain::Millis;

/// The smallest signing key accepted: HS256 is only as strong as its key, and RFC 7518
/// asks for at least the hash's 256 bits.
pub(crate) const MIN_KEY_BYTES: usize = 32;

/// Clock skew tolerated for `iat` between nodes.
const IAT_LEEWAY_MS: Millis = 30_000;

/// A signing key. Its bytes never leave this type: no `Debug`, no `Display`.
#[derive(Clone)]
pub(crate) struct SigningKey {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum KeyError {
    #[error("the JWT secret must be at least {MIN_KEY_BYTES} bytes long (it is {0})")]
    TooShort(usize),
}

impl SigningKey {
    pub(crate) fn from_secret(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < MIN_KEY_BYTES {
            return Err(KeyError::TooShort(secret.len()));
        }
        Ok(Self {
            encoding: EncodingKey::from_secret(secret).expect("a non-empty secret"),
            decoding: DecodingKey::from_secret(secret).expect("a non-empty secret"),
        })
    }
}

/// What an access token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claims {
    pub iss: String,
    pub aud: String,
    /// The user id.
    pub sub: String,
    /// Token id.
    pub jti: String,
    /// The login session (refresh-token family) the token belongs to.
    pub sid: String,
    /// Seconds since the epoch.
    pub iat: i64,
    pub exp: i64,
}

/// Why a token was refused. The caller answers 401 to all of them alike; the variant
/// is for logs and tests.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum TokenError {
    #[error("the access token has expired")]
    Expired,
    #[error("the access token was issued in the future")]
    NotYetValid,
    #[error("the access token is invalid: {0}")]
    Invalid(String),
}

/// Issues and checks access tokens for one issuer and audience.
#[derive(Debug, Clone)]
pub(crate) struct TokenCodec {
    key: SigningKey,
    issuer: String,
    audience: String,
    validation: Validation,
}

impl TokenCodec {
    pub(crate) fn new(key: SigningKey, issuer: &str, audience: &str) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub", "jti"]);
        // Checked in `verify` against the service's clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        Self {
            key,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            validation,
        }
    }

    pub(crate) fn issue(
        &self,
        user_id: &str,
        session: &str,
        now: Millis,
        ttl_ms: Millis,
    ) -> (String, Claims) {
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: user_id.to_owned(),
            jti: crate::domain::new_id(),
            sid: session.to_owned(),
            iat: now.div_euclid(1000),
            exp: (now + ttl_ms).div_euclid(1000),
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key.encoding)
                .expect("HS256 signing cannot fail with a valid key");
        (token, claims)
    }

    /// Whether `token` is an access token this codec signed, whether or not it is still
    /// valid: what must never be handed to a module, even expired.
    pub(crate) fn signed_by_us(&self, token: &str) -> bool {
        jsonwebtoken::decode::<Claims>(token, &self.key.decoding, &self.validation).is_ok()
    }

    pub(crate) fn verify(&self, token: &str, now: Millis) -> Result<Claims, TokenError> {
        let claims = jsonwebtoken::decode::<Claims>(token, &self.key.decoding, &self.validation)
            .map_err(|err| TokenError::Invalid(err.to_string()))?
            .claims;
        if claims.exp.saturating_mul(1000) <= now {
            return Err(TokenError::Expired);
        }
        if claims.iat.saturating_mul(1000) > now + IAT_LEEWAY_MS {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use super::*;

    const NOW: Millis = 1_700_000_000_000;
    const MINUTE: Millis = 60_000;

    fn codec() -> TokenCodec {
        TokenCodec::new(
            SigningKey::from_secret(&[7; 32]).unwrap(),
            "runcell",
            "runcell-api",
        )
    }

    fn b64(json: &serde_json::Value) -> String {
        URL_SAFE_NO_PAD.encode(json.to_string())
    }

    #[test]
    fn a_token_verifies_until_it_expires() {
        let codec = codec();
        let (token, claims) = codec.issue("u1", "s1", NOW, 15 * MINUTE);
        assert_eq!(codec.verify(&token, NOW + 14 * MINUTE), Ok(claims));
        assert_eq!(
            codec.verify(&token, NOW + 15 * MINUTE),
            Err(TokenError::Expired)
        );
    }

    #[test]
    fn a_token_from_the_future_is_refused() {
        let codec = codec();
        let (token, _) = codec.issue("u1", "s1", NOW + 5 * MINUTE, 15 * MINUTE);
        assert_eq!(codec.verify(&token, NOW), Err(TokenError::NotYetValid));
    }

    #[test]
    fn a_tampered_payload_breaks_the_signature() {
        let codec = codec();
        let (token, _) = codec.issue("u1", "s1", NOW, 15 * MINUTE);
        let parts: Vec<&str> = token.split('.').collect();
        let forged = b64(&serde_json::json!({
            "iss": "runcell", "aud": "runcell-api", "sub": "admin-id", "jti": "x",
            "sid": "s1", "iat": NOW / 1000, "exp": NOW / 1000 + 900,
        }));
        let tampered = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert!(matches!(
            codec.verify(&tampered, NOW),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn a_token_signed_with_another_key_is_refused() {
        let other = TokenCodec::new(
            SigningKey::from_secret(&[8; 32]).unwrap(),
            "runcell",
            "runcell-api",
        );
        let (token, _) = other.issue("u1", "s1", NOW, MINUTE);
        assert!(matches!(
            codec().verify(&token, NOW),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn alg_none_is_refused() {
        let claims = serde_json::json!({
            "iss": "runcell", "aud": "runcell-api", "sub": "u1", "jti": "x", "sid": "s1",
            "iat": NOW / 1000, "exp": NOW / 1000 + 900,
        });
        let header = b64(&serde_json::json!({"alg": "none", "typ": "JWT"}));
        for token in [
            format!("{header}.{}.", b64(&claims)),
            format!("{header}.{}", b64(&claims)),
        ] {
            assert!(
                matches!(codec().verify(&token, NOW), Err(TokenError::Invalid(_))),
                "{token}"
            );
        }
    }

    #[test]
    fn another_algorithm_with_the_same_secret_is_refused() {
        // HS512 over the same secret: a valid signature, but not the pinned algorithm.
        let claims = Claims {
            iss: "runcell".into(),
            aud: "runcell-api".into(),
            sub: "u1".into(),
            jti: "x".into(),
            sid: "s1".into(),
            iat: NOW / 1000,
            exp: NOW / 1000 + 900,
        };
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims,
            &EncodingKey::from_secret(&[7; 32]).unwrap(),
        )
        .unwrap();
        assert!(matches!(
            codec().verify(&token, NOW),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn a_wrong_audience_or_issuer_is_refused() {
        let key = SigningKey::from_secret(&[7; 32]).unwrap();
        let elsewhere = TokenCodec::new(key.clone(), "runcell", "another-api");
        let (token, _) = elsewhere.issue("u1", "s1", NOW, MINUTE);
        assert!(matches!(
            codec().verify(&token, NOW),
            Err(TokenError::Invalid(_))
        ));
        let impostor = TokenCodec::new(key, "someone-else", "runcell-api");
        let (token, _) = impostor.issue("u1", "s1", NOW, MINUTE);
        assert!(matches!(
            codec().verify(&token, NOW),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn a_short_secret_is_refused() {
        assert_eq!(
            SigningKey::from_secret(b"too short").unwrap_err(),
            KeyError::TooShort(9)
        );
    }
}
