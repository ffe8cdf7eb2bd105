//! Access tokens: HS256 JWTs minted with an API secret and verified against configured keys.
//!
//! Owns the token claims, minting and verification. Invariants: only HS256 is ever accepted;
//! the signing key is chosen by the token's `iss` (the API key) and the claims are trusted
//! only after its signature checks out; time checks use the `now_unix` the caller passes,
//! never the clock, with [`CLOCK_SKEW_SECS`] of leeway on `exp` and `nbf`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Seconds of clock skew tolerated between the minting and the verifying host.
pub const CLOCK_SKEW_SECS: u64 = 5;

/// Why a token was refused or could not be minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No token was presented.
    #[error("missing access token")]
    MissingToken,
    /// The token is not a well-formed JWT carrying our claims.
    #[error("malformed access token")]
    Malformed,
    /// The token's issuer is not a configured API key.
    #[error("unknown api key")]
    UnknownKey,
    /// The signature does not match the API key's secret.
    #[error("bad token signature")]
    BadSignature,
    /// The token's `exp` has passed.
    #[error("access token expired")]
    Expired,
    /// The token's `nbf` is still in the future.
    #[error("access token not yet valid")]
    NotYetValid,
    /// The token is for another room.
    #[error("access token is for another room")]
    WrongRoom,
    /// The token is signed with an algorithm other than HS256.
    #[error("access token algorithm not allowed")]
    BadAlgorithm,
    /// A token could not be minted.
    #[error("cannot mint token: {0}")]
    Mint(String),
}

impl AuthError {
    /// Stable snake_case code for API responses.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::Malformed => "malformed_token",
            AuthError::UnknownKey => "unknown_api_key",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "token_expired",
            AuthError::NotYetValid => "token_not_yet_valid",
            AuthError::WrongRoom => "wrong_room",
            AuthError::BadAlgorithm => "bad_algorithm",
            AuthError::Mint(_) => "mint_failed",
        }
    }
}

/// What a participant may do in the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Grants {
    /// May publish tracks.
    pub publish: bool,
    /// May subscribe to others' tracks.
    pub subscribe: bool,
    /// May administer the room.
    pub admin: bool,
}

/// The token payload: JWT registered claims plus ours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The API key that signed the token.
    pub iss: String,
    /// Identity: a stable user id chosen by the integrator.
    pub sub: String,
    /// Display name; may be empty.
    #[serde(default)]
    pub name: String,
    /// Room the token is valid for.
    pub room: String,
    /// Permissions in that room.
    #[serde(default)]
    pub grants: Grants,
    /// The participant's region, a placement hint; may be absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// Not valid before, unix seconds.
    pub nbf: u64,
    /// Issued at, unix seconds.
    pub iat: u64,
}

/// What to put in a new token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// API key whose secret signs the token; becomes `iss`.
    pub api_key: String,
    /// Stable user id; becomes `sub`.
    pub identity: String,
    /// Display name; may be empty.
    pub name: String,
    /// Room the token admits to.
    pub room: String,
    /// Permissions in that room.
    pub grants: Grants,
    /// Lifetime from `now_unix`; at least one second.
    pub ttl: Duration,
}

/// Mints an HS256 token for `req`, signed with `secret`, issued at `now_unix`.
pub fn mint(req: &TokenRequest, secret: &str, now_unix: u64) -> Result<String, AuthError> {
    check_request(req, secret)?;

    let claims = Claims {
        iss: req.api_key.clone(),
        sub: req.identity.clone(),
        name: req.name.clone(),
        room: req.room.clone(),
        grants: req.grants,
        region: None,
        exp: now_unix.saturating_add(req.ttl.as_secs()),
        nbf: now_unix,
        iat: now_unix,
    };
    let key = EncodingKey::from_secret(secret.as_bytes());
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key)
        .map_err(|err| AuthError::Mint(err.to_string()))
}

/// Refuses requests that would mint a token nobody can use.
fn check_request(req: &TokenRequest, secret: &str) -> Result<(), AuthError> {
    let refusals = [
        (req.api_key.is_empty(), "api key must not be empty"),
        (req.identity.is_empty(), "identity must not be empty"),
        (req.room.is_empty(), "room must not be empty"),
        (secret.is_empty(), "secret must not be empty"),
        (req.ttl.as_secs() == 0, "ttl must be at least one second"),
    ];
    match refusals.iter().find(|(bad, _)| *bad) {
        Some((_, why)) => Err(AuthError::Mint((*why).to_owned())),
        None => Ok(()),
    }
}

/// Verifies tokens against the configured API keys.
#[derive(Clone)]
pub struct Verifier {
    keys: BTreeMap<String, DecodingKey>,
}

// Key material stays out of logs: Debug lists the API key names only.
impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Only the issuer, read before the signature is checked to choose the key.
#[derive(Deserialize)]
struct Issuer {
    iss: String,
}

impl Verifier {
    /// Builds a verifier from API key name to secret.
    pub fn new(keys: &BTreeMap<String, String>) -> Verifier {
        let keys = keys
            .iter()
            .map(|(name, secret)| (name.clone(), DecodingKey::from_secret(secret.as_bytes())))
            .collect();
        Verifier { keys }
    }

    /// Verifies `token`'s signature (HS256 only), `exp` and `nbf` against `now_unix`, and,
    /// when `expected_room` is given, that the token is for that room.
    pub fn verify(
        &self,
        token: &str,
        expected_room: Option<&str>,
        now_unix: u64,
    ) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::MissingToken);
        }
        let key = self.key_for(token)?;

        let data = jsonwebtoken::decode::<Claims>(token, key, &signed_validation())
            .map_err(from_jwt_error)?;
        check_claims(&data.claims, expected_room, now_unix)?;
        Ok(data.claims)
    }

    /// Finds the key named by the token's unverified issuer, after refusing other algorithms.
    fn key_for(&self, token: &str) -> Result<&DecodingKey, AuthError> {
        // Unknown algorithms such as "none" do not even parse as a header.
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if header.alg != Algorithm::HS256 {
            return Err(AuthError::BadAlgorithm);
        }

        let unverified = DecodingKey::from_secret(&[]);
        let issuer = jsonwebtoken::decode::<Issuer>(token, &unverified, &unsigned_validation())
            .map_err(|_| AuthError::Malformed)?;
        self.keys
            .get(&issuer.claims.iss)
            .ok_or(AuthError::UnknownKey)
    }
}

/// HS256 signature check only: times are checked against the caller's clock instead.
fn signed_validation() -> Validation {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.leeway = 0;
    validation
}

/// Reads claims without checking anything; used only to pick the key.
fn unsigned_validation() -> Validation {
    let mut validation = signed_validation();
    validation.insecure_disable_signature_validation();
    validation
}

fn from_jwt_error(err: jsonwebtoken::errors::Error) -> AuthError {
    match err.kind() {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => AuthError::BadAlgorithm,
        _ => AuthError::Malformed,
    }
}

/// Checks validity times, with skew leeway, and the room.
fn check_claims(claims: &Claims, room: Option<&str>, now_unix: u64) -> Result<(), AuthError> {
    // `exp` is the first second at which the token is no longer accepted.
    if now_unix >= claims.exp.saturating_add(CLOCK_SKEW_SECS) {
        return Err(AuthError::Expired);
    }
    if now_unix.saturating_add(CLOCK_SKEW_SECS) < claims.nbf {
        return Err(AuthError::NotYetValid);
    }

    match room {
        Some(room) if room != claims.room => Err(AuthError::WrongRoom),
        _ => Ok(()),
    }
}

/// Current unix time in seconds, for callers at the edge; 0 if the clock is before 1970.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";
    const OTHER: &str = "fedcba9876543210fedcba9876543210-other";
    const NOW: u64 = 1_700_000_000;

    fn request(room: &str) -> TokenRequest {
        TokenRequest {
            api_key: "k1".to_owned(),
            identity: "alice".to_owned(),
            name: "Alice".to_owned(),
            room: room.to_owned(),
            grants: Grants {
                publish: true,
                subscribe: true,
                admin: false,
            },
            ttl: Duration::from_secs(600),
        }
    }

    fn verifier() -> Verifier {
        Verifier::new(&BTreeMap::from([("k1".to_owned(), SECRET.to_owned())]))
    }

    fn token(room: &str) -> String {
        mint(&request(room), SECRET, NOW).expect("mint")
    }

    fn parts(token: &str) -> Vec<&str> {
        token.split('.').collect()
    }

    #[test]
    fn round_trip() {
        let claims = verifier()
            .verify(&token("r1"), Some("r1"), NOW)
            .expect("valid");
        assert_eq!(claims.iss, "k1");
        assert_eq!(claims.sub, "alice");
        assert_eq!(claims.name, "Alice");
        assert_eq!(claims.room, "r1");
        assert_eq!(
            claims.grants,
            Grants {
                publish: true,
                subscribe: true,
                admin: false
            }
        );
        assert_eq!((claims.iat, claims.nbf, claims.exp), (NOW, NOW, NOW + 600));
    }

    #[test]
    fn any_room_when_none_expected() {
        assert!(verifier().verify(&token("r1"), None, NOW).is_ok());
    }

    #[test]
    fn forged_signature() {
        let forged = mint(&request("r1"), OTHER, NOW).expect("mint");
        let err = verifier()
            .verify(&forged, Some("r1"), NOW)
            .expect_err("forged");
        assert_eq!(err, AuthError::BadSignature);
    }

    #[test]
    fn tampered_payload() {
        // Another room's valid payload under this token's signature.
        let original = token("r1");
        let other = token("r2");
        let (a, b) = (parts(&original), parts(&other));
        let tampered = format!("{}.{}.{}", a[0], b[1], a[2]);
        let err = verifier()
            .verify(&tampered, Some("r2"), NOW)
            .expect_err("tampered");
        assert_eq!(err, AuthError::BadSignature);
    }

    #[test]
    fn expired_with_leeway() {
        let exp = NOW + 600;
        let ok = verifier().verify(&token("r1"), None, exp + CLOCK_SKEW_SECS - 1);
        assert!(ok.is_ok());
        let err = verifier().verify(&token("r1"), None, exp + CLOCK_SKEW_SECS);
        assert_eq!(err, Err(AuthError::Expired));
    }

    #[test]
    fn not_yet_valid_with_leeway() {
        let ok = verifier().verify(&token("r1"), None, NOW - CLOCK_SKEW_SECS);
        assert!(ok.is_ok());
        let err = verifier().verify(&token("r1"), None, NOW - CLOCK_SKEW_SECS - 1);
        assert_eq!(err, Err(AuthError::NotYetValid));
    }

    #[test]
    fn wrong_room() {
        let err = verifier().verify(&token("r1"), Some("r2"), NOW);
        assert_eq!(err, Err(AuthError::WrongRoom));
    }

    #[test]
    fn unknown_key() {
        let mut req = request("r1");
        req.api_key = "k2".to_owned();
        let minted = mint(&req, SECRET, NOW).expect("mint");
        assert_eq!(
            verifier().verify(&minted, None, NOW),
            Err(AuthError::UnknownKey)
        );
    }

    #[test]
    fn missing_and_garbage() {
        let v = verifier();
        assert_eq!(v.verify("", None, NOW), Err(AuthError::MissingToken));
        for garbage in ["garbage", "a.b.c", "....", "é.é.é", "eyJ.eyJ.x"] {
            assert_eq!(
                v.verify(garbage, None, NOW),
                Err(AuthError::Malformed),
                "{garbage}"
            );
        }
    }

    #[test]
    fn claims_missing_fields_are_malformed() {
        // {"iss":"k1"} signed correctly still lacks sub, room and times.
        #[derive(Serialize)]
        struct Partial {
            iss: &'static str,
        }
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let partial = Partial { iss: "k1" };
        let signed = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &partial, &key);
        let err = verifier().verify(&signed.expect("encode"), None, NOW);
        assert_eq!(err, Err(AuthError::Malformed));
    }

    #[test]
    fn alg_none_is_never_accepted() {
        // base64url of {"alg":"none","typ":"JWT"}.
        let none_header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
        let original = token("r1");
        let payload = parts(&original)[1];
        for unsigned in [
            format!("{none_header}.{payload}."),
            format!("{none_header}.{payload}"),
        ] {
            let err = verifier()
                .verify(&unsigned, None, NOW)
                .expect_err("alg none");
            assert!(
                matches!(err, AuthError::BadAlgorithm | AuthError::Malformed),
                "{err:?}"
            );
        }
    }

    #[test]
    fn hs512_is_refused() {
        let claims = verifier().verify(&token("r1"), None, NOW).expect("valid");
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let hs512 = jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims, &key);
        let err = verifier().verify(&hs512.expect("encode"), None, NOW);
        assert_eq!(err, Err(AuthError::BadAlgorithm));
    }

    #[test]
    fn mint_refuses_unusable_requests() {
        let mut req = request("r1");
        req.ttl = Duration::from_millis(500);
        assert!(matches!(mint(&req, SECRET, NOW), Err(AuthError::Mint(_))));
        assert!(matches!(
            mint(&request(""), SECRET, NOW),
            Err(AuthError::Mint(_))
        ));
        assert!(matches!(
            mint(&request("r1"), "", NOW),
            Err(AuthError::Mint(_))
        ));
    }

    #[test]
    fn codes_are_stable() {
        let cases = [
            (AuthError::MissingToken, "missing_token"),
            (AuthError::Malformed, "malformed_token"),
            (AuthError::UnknownKey, "unknown_api_key"),
            (AuthError::BadSignature, "bad_signature"),
            (AuthError::Expired, "token_expired"),
            (AuthError::NotYetValid, "token_not_yet_valid"),
            (AuthError::WrongRoom, "wrong_room"),
            (AuthError::BadAlgorithm, "bad_algorithm"),
            (AuthError::Mint(String::new()), "mint_failed"),
        ];
        for (err, code) in cases {
            assert_eq!(err.code(), code);
        }
    }

    #[test]
    fn debug_hides_secrets() {
        let shown = format!("{:?}", verifier());
        assert!(shown.contains("k1") && !shown.contains(SECRET), "{shown}");
    }

    #[test]
    fn clock_reads_something_recent() {
        assert!(now_unix() > NOW);
    }
}
