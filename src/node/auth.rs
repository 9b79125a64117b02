//! Who may talk to a node: HMAC-SHA256 tags on node-to-node calls (a shared cluster key),
//! a bearer token for the public API, and the rule that an unauthenticated node listens only
//! on loopback.
//!
//! A tag covers method, path, a millisecond timestamp, a nonce and the SHA-256 digest of the
//! body, which travels in its own header. So the receiver checks the tag from the headers
//! alone, before it reads (and buffers) any of the body, and checks the body against the
//! digest once it has read it. The nonce (a per-process random base plus a counter) makes two
//! identical calls in one millisecond differ. The receiver checks the tag in constant time,
//! refuses timestamps outside `REPLAY_WINDOW`, and remembers every tag it accepted within the
//! window so that a captured call cannot be replayed.
//!
//! Owns: the tag scheme, the replay cache, the bearer-token comparison and the exposure rule.
//! Must not touch: sockets and bodies (`http` reads them and asks here). Left out: TLS, key
//! rotation (a ring changes its key by restarting every node).

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Shortest accepted cluster key: 256 bits, the HMAC-SHA256 block of strength.
pub const MIN_KEY_BYTES: usize = 32;
/// How far a call's timestamp may be from the receiver's clock. Bounds how long a captured
/// call stays usable and how much the replay cache must remember; nodes' clocks must agree
/// within it.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(30);
/// Tags remembered at most. At the limit the oldest is forgotten and no call older than it is
/// accepted any more (the window shrinks; a replay never gets through). 1 Mi tags is 30 s of
/// 35k internal calls per second, in about 40 MiB.
const REPLAY_CACHE: usize = 1 << 20;

pub const TIME_HEADER: &str = "x-sdht-time";
pub const TAG_HEADER: &str = "x-sdht-mac";
pub const NONCE_HEADER: &str = "x-sdht-nonce";
/// SHA-256 of the body, lower-case hex; covered by the tag.
pub const DIGEST_HEADER: &str = "x-sdht-digest";

type HmacSha256 = Hmac<Sha256>;

/// Why an internal call was refused (all 401).
#[derive(Debug, thiserror::Error, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    #[error("internal call without a valid authentication tag")]
    BadTag,
    #[error("internal call timestamp outside the replay window (check clocks)")]
    Stale,
    #[error("internal call replayed")]
    Replayed,
    #[error("missing or wrong bearer token")]
    BadToken,
    #[error("internal call body does not match its signed digest")]
    BadDigest,
}

/// A client token without a cluster key would guard `/kv` while `POST /internal/rpc`, which
/// reads and writes any key, stays open to anyone: refused at startup.
#[derive(Debug, thiserror::Error)]
#[error(
    "--client-token-file needs a cluster key (--cluster-key-file or SDHT_CLUSTER_KEY): without one, \
     node-to-node calls are unauthenticated and anyone could read and write keys through them, bypassing the token"
)]
pub struct TokenWithoutKey;

/// Refuses a client token on a node that has no cluster key (see `TokenWithoutKey`).
pub fn check_token_needs_key(has_token: bool, has_key: bool) -> Result<(), TokenWithoutKey> {
    if has_token && !has_key {
        Err(TokenWithoutKey)
    } else {
        Ok(())
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn tag(key: &[u8], method: &str, path: &str, time_ms: u64, nonce: &str, digest: &str) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    let time = time_ms.to_string();
    for part in [method, "\n", path, "\n", &time, "\n", nonce, "\n", digest] {
        mac.update(part.as_bytes());
    }
    mac
}

/// SHA-256 of a body, as the digest header carries it (lower-case hex).
pub fn body_digest(body: &[u8]) -> String {
    use sha2::Digest;
    hex(&Sha256::digest(body))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Strict hex: an even number of ASCII hex digits, nothing else (no signs, no spaces).
fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// The authentication headers of an incoming call, as received.
#[derive(Clone, Copy, Default)]
pub struct Signature<'a> {
    pub time: Option<&'a str>,
    pub nonce: Option<&'a str>,
    pub digest: Option<&'a str>,
    pub tag: Option<&'a str>,
}

/// The headers that authenticate one outgoing call.
#[derive(Clone, Debug)]
pub struct Signed {
    pub time: String,
    pub nonce: String,
    pub digest: String,
    pub tag: String,
}

impl Signed {
    /// (header name, value) pairs, to add to the request.
    pub fn headers(&self) -> [(&'static str, &str); 4] {
        [
            (TIME_HEADER, &self.time),
            (NONCE_HEADER, &self.nonce),
            (DIGEST_HEADER, &self.digest),
            (TAG_HEADER, &self.tag),
        ]
    }
}

/// What the body of a call whose headers verified must hash to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BodyDigest([u8; 32]);

impl BodyDigest {
    /// Checks the body, once read, against the signed digest.
    pub fn check(&self, body: &[u8]) -> Result<(), AuthError> {
        use sha2::Digest;
        if Sha256::digest(body)[..] == self.0[..] {
            Ok(())
        } else {
            Err(AuthError::BadDigest)
        }
    }
}

/// The shared secret of a ring, signing outgoing calls and checking incoming ones.
pub struct ClusterKey {
    key: Vec<u8>,
    seen: Mutex<Seen>,
    /// Random per process, so nonces differ across restarts.
    nonce_base: u64,
    nonce_next: AtomicU64,
}

#[derive(Default)]
struct Seen {
    order: VecDeque<(u64, [u8; 32])>,
    tags: HashSet<[u8; 32]>,
    /// No call at or before this time is accepted: it may have been forgotten.
    floor: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("the cluster key must be at least {MIN_KEY_BYTES} bytes (got {0})")]
pub struct KeyTooShort(pub usize);

impl ClusterKey {
    pub fn new(key: Vec<u8>) -> Result<ClusterKey, KeyTooShort> {
        if key.len() < MIN_KEY_BYTES {
            return Err(KeyTooShort(key.len()));
        }
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let seed = format!("{nanos} {}", std::process::id());
        let nonce_base = xxhash_rust::xxh3::xxh3_64(seed.as_bytes());
        let seen = Mutex::new(Seen::default());
        Ok(ClusterKey { key, seen, nonce_base, nonce_next: AtomicU64::new(0) })
    }

    /// The authentication headers for an outgoing call.
    pub fn sign(&self, method: &str, path: &str, body: &[u8]) -> Signed {
        let t = now_ms();
        let n = self.nonce_next.fetch_add(1, Ordering::Relaxed);
        let nonce = format!("{:016x}{n:x}", self.nonce_base);
        let digest = body_digest(body);
        let tag = hex(&tag(&self.key, method, path, t, &nonce, &digest).finalize().into_bytes());
        Signed { time: t.to_string(), nonce, digest, tag }
    }

    /// Checks an incoming call's headers against its method and path, before its body is
    /// read; the body must then pass the returned digest's `check`.
    pub fn verify(&self, method: &str, path: &str, sig: Signature<'_>) -> Result<BodyDigest, AuthError> {
        self.verify_at(now_ms(), method, path, sig)
    }

    fn verify_at(
        &self,
        now: u64,
        method: &str,
        path: &str,
        sig: Signature<'_>,
    ) -> Result<BodyDigest, AuthError> {
        let t: u64 = sig.time.and_then(|t| t.parse().ok()).ok_or(AuthError::BadTag)?;
        let nonce = sig.nonce.ok_or(AuthError::BadTag)?;
        let digest_hex = sig.digest.ok_or(AuthError::BadTag)?;
        let digest: [u8; 32] = unhex(digest_hex).and_then(|d| d.try_into().ok()).ok_or(AuthError::BadTag)?;
        let given = sig.tag.and_then(unhex).ok_or(AuthError::BadTag)?;
        // verify_slice compares in constant time.
        tag(&self.key, method, path, t, nonce, digest_hex)
            .verify_slice(&given)
            .map_err(|_| AuthError::BadTag)?;
        let window = REPLAY_WINDOW.as_millis() as u64;
        if t + window < now || t > now + window {
            return Err(AuthError::Stale);
        }
        let given: [u8; 32] = given.try_into().map_err(|_| AuthError::BadTag)?;
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if t <= seen.floor {
            return Err(AuthError::Stale);
        }
        while let Some(&(old, tag)) = seen.order.front() {
            if old + window >= now && seen.order.len() < REPLAY_CACHE {
                break;
            }
            seen.order.pop_front();
            seen.tags.remove(&tag);
            if old + window >= now {
                // Forgotten while still inside the window: refuse anything this old from now on.
                seen.floor = seen.floor.max(old);
            }
        }
        if !seen.tags.insert(given) {
            return Err(AuthError::Replayed);
        }
        seen.order.push_back((t, given));
        Ok(BodyDigest(digest))
    }
}

/// Compares a bearer token in constant time (for equal lengths). The scheme is
/// case-insensitive and may be followed by several spaces (RFC 9110, 11.1 and 11.4).
pub fn token_matches(header: Option<&str>, token: &str) -> bool {
    let Some((scheme, given)) = header.and_then(|h| h.split_once(' ')) else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return false;
    }
    let given = given.trim_start_matches(' ');
    given.len() == token.len() && given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// A node without a cluster key may only listen on loopback, unless `insecure` says otherwise.
pub fn exposure_allowed(listen: SocketAddr, has_key: bool, insecure: bool) -> bool {
    has_key || insecure || listen.ip().is_loopback()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ClusterKey {
        ClusterKey::new(vec![7; 32]).unwrap()
    }

    fn sig(s: &Signed) -> Signature<'_> {
        Signature { time: Some(&s.time), nonce: Some(&s.nonce), digest: Some(&s.digest), tag: Some(&s.tag) }
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(ClusterKey::new(vec![1; 31]).is_err());
    }

    #[test]
    fn a_signed_call_verifies_once_and_binds_its_body() {
        let k = key();
        let s = k.sign("POST", "/internal/rpc", b"body");
        let digest = k.verify("POST", "/internal/rpc", sig(&s)).unwrap();
        assert_eq!(digest.check(b"body"), Ok(()));
        assert_eq!(digest.check(b"bodY"), Err(AuthError::BadDigest));
        assert_eq!(digest.check(b""), Err(AuthError::BadDigest));
        assert_eq!(k.verify("POST", "/internal/rpc", sig(&s)), Err(AuthError::Replayed));
    }

    #[test]
    fn identical_calls_get_distinct_tags() {
        let k = key();
        let (a, b) = (k.sign("POST", "/p", b"same"), k.sign("POST", "/p", b"same"));
        assert_ne!(a.tag, b.tag);
        assert!(k.verify("POST", "/p", sig(&a)).is_ok());
        assert!(k.verify("POST", "/p", sig(&b)).is_ok());
    }

    #[test]
    fn any_change_breaks_the_tag() {
        let k = key();
        let s = k.sign("POST", "/internal/rpc", b"body");
        let bad = Err(AuthError::BadTag);
        let check = |sig| k.verify("POST", "/internal/rpc", sig);
        // Another body's digest in the header: the tag no longer matches.
        let other = body_digest(b"bodY");
        assert_eq!(check(Signature { digest: Some(&other), ..sig(&s) }), bad);
        assert_eq!(k.verify("POST", "/internal/rpx", sig(&s)), bad);
        let later = (s.time.parse::<u64>().unwrap() + 1).to_string();
        assert_eq!(check(Signature { time: Some(&later), ..sig(&s) }), bad);
        assert_eq!(check(Signature { nonce: Some("0"), ..sig(&s) }), bad);
        assert_eq!(check(Signature { time: None, ..sig(&s) }), bad);
        assert_eq!(check(Signature { digest: None, ..sig(&s) }), bad);
        // Hex with a sign is not hex.
        let signed_hex = format!("+{}", &s.digest[1..]);
        assert_eq!(check(Signature { digest: Some(&signed_hex), ..sig(&s) }), bad);
        assert_eq!(check(Signature::default()), bad);
        let other = ClusterKey::new(vec![8; 32]).unwrap();
        assert_eq!(other.verify("POST", "/internal/rpc", sig(&s)), bad);
    }

    #[test]
    fn stale_and_future_calls_are_refused() {
        let k = key();
        let s = k.sign("POST", "/p", b"");
        let t0: u64 = s.time.parse().unwrap();
        let w = REPLAY_WINDOW.as_millis() as u64;
        let at = |now| k.verify_at(now, "POST", "/p", sig(&s)).map(|_| ());
        assert_eq!(at(t0 + w + 1), Err(AuthError::Stale));
        assert_eq!(at(t0 - w - 1), Err(AuthError::Stale));
        assert_eq!(at(t0 + w), Ok(()));
    }

    #[test]
    fn bearer_tokens() {
        assert!(token_matches(Some("Bearer s3cret"), "s3cret"));
        assert!(token_matches(Some("bearer s3cret"), "s3cret"));
        assert!(token_matches(Some("BEARER   s3cret"), "s3cret"));
        assert!(!token_matches(Some("Bearer s3creT"), "s3cret"));
        assert!(!token_matches(Some("Basic s3cret"), "s3cret"));
        assert!(!token_matches(Some("Bearers3cret"), "s3cret"));
        assert!(!token_matches(Some("s3cret"), "s3cret"));
        assert!(!token_matches(None, "s3cret"));
    }

    #[test]
    fn a_token_needs_a_key() {
        assert!(check_token_needs_key(true, false).is_err());
        assert!(check_token_needs_key(true, true).is_ok());
        assert!(check_token_needs_key(false, false).is_ok());
    }

    #[test]
    fn only_loopback_without_a_key() {
        let lo: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:1".parse().unwrap();
        assert!(exposure_allowed(lo, false, false));
        assert!(exposure_allowed("[::1]:1".parse().unwrap(), false, false));
        assert!(!exposure_allowed(any, false, false));
        assert!(exposure_allowed(any, true, false));
        assert!(exposure_allowed(any, false, true));
    }
}
