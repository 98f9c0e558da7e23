//! The result cache: identical requests to the same model are answered without running it again.
//!
//! Key: sha256 of the model id and the canonical bytes of the inputs (sorted by name), so the same weights and the
//! same input always hit, whatever the JSON layout was. In memory by default (moka, bounded by bytes, with TTL);
//! optionally Redis, shared by a fleet of nodes. A failing Redis is a miss, never a failed request.

use std::sync::Arc;
use std::time::Duration;

use mlbridge_sdk::{ModelId, Tensor};
use redis::AsyncCommands;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// Longest wait for the Redis backend on a request's path.
const BACKEND_TIMEOUT: Duration = Duration::from_millis(250);

/// 32-byte cache key.
pub type CacheKey = [u8; 32];

/// The cache key of `inputs` for `model`.
pub fn cache_key(model: &ModelId, inputs: &[Tensor]) -> CacheKey {
    let mut sorted: Vec<&Tensor> = inputs.iter().collect();
    sorted.sort_by(|a, b| a.name().cmp(b.name()));
    let mut bytes = Vec::with_capacity(64 + inputs.iter().map(Tensor::byte_len).sum::<usize>() + 64 * inputs.len());
    bytes.extend_from_slice(model.as_bytes());
    for t in sorted {
        t.canonical_bytes(&mut bytes);
    }
    Sha256::digest(&bytes).into()
}

/// Where cached results live.
#[derive(Clone)]
pub enum ResultCache {
    /// In this process.
    Memory(moka::future::Cache<CacheKey, Arc<Vec<Tensor>>>),
    /// In Redis, shared by a fleet.
    Redis {
        /// The connection (reconnects by itself).
        conn: redis::aio::ConnectionManager,
        /// Entry lifetime.
        ttl: Duration,
    },
}

impl std::fmt::Debug for ResultCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory(c) => write!(f, "ResultCache::Memory({} entries)", c.entry_count()),
            Self::Redis { ttl, .. } => write!(f, "ResultCache::Redis(ttl {ttl:?})"),
        }
    }
}

impl ResultCache {
    /// An in-memory cache holding at most `capacity_bytes` of outputs, each for at most `ttl`.
    pub fn memory(capacity_bytes: u64, ttl: Duration) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(capacity_bytes)
            .weigher(|_k: &CacheKey, v: &Arc<Vec<Tensor>>| {
                u32::try_from(v.iter().map(|t| t.byte_len() + t.name().len() + 64).sum::<usize>() + 32)
                    .unwrap_or(u32::MAX)
            })
            .time_to_live(ttl)
            .build();
        Self::Memory(cache)
    }

    /// A Redis cache at `url` (e.g. `redis://127.0.0.1:6379/0`).
    pub async fn redis(url: &str, ttl: Duration) -> Result<Self> {
        // Messages name the server, never the password the URL may carry.
        let shown = redact_password(url);
        let client = redis::Client::open(url).map_err(|e| Error::Cache(format!("bad Redis URL {shown}: {e}")))?;
        // Short timeouts and one retry: a slow or dead Redis must turn into a quick miss, never a stuck request.
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(BACKEND_TIMEOUT)
            .set_response_timeout(BACKEND_TIMEOUT)
            .set_number_of_retries(1)
            .set_max_delay(100);
        let conn = client.get_connection_manager_with_config(config).await.map_err(|e| {
            Error::Cache(format!("cannot connect to Redis at {shown}: {e}; start redis-server or drop --redis-url"))
        })?;
        Ok(Self::Redis { conn, ttl })
    }

    /// A cached result, if any. Backend failures are logged and count as a miss.
    pub async fn get(&self, key: &CacheKey) -> Option<Arc<Vec<Tensor>>> {
        match self {
            Self::Memory(c) => c.get(key).await,
            Self::Redis { conn, .. } => {
                let mut conn = conn.clone();
                let fetched =
                    tokio::time::timeout(BACKEND_TIMEOUT, conn.get::<_, Option<Vec<u8>>>(redis_key(key))).await;
                let raw = match fetched {
                    Ok(Ok(v)) => v,
                    Ok(Err(err)) => {
                        tracing::warn!(target: "node::cache", %err, "Redis get failed; treating as a miss");
                        return None;
                    }
                    Err(_) => {
                        tracing::warn!(target: "node::cache", "Redis get timed out; treating as a miss");
                        return None;
                    }
                };
                raw.and_then(|bytes| ciborium::from_reader::<Vec<Tensor>, _>(bytes.as_slice()).ok()).map(Arc::new)
            }
        }
    }

    /// Store a result. Backend failures are logged.
    pub async fn insert(&self, key: CacheKey, outputs: Arc<Vec<Tensor>>) {
        match self {
            Self::Memory(c) => c.insert(key, outputs).await,
            Self::Redis { conn, ttl } => {
                let mut bytes = Vec::new();
                if ciborium::into_writer(outputs.as_ref(), &mut bytes).is_err() {
                    return;
                }
                let mut conn = conn.clone();
                let set = conn.set_ex::<_, _, ()>(redis_key(&key), bytes, ttl.as_secs().max(1));
                match tokio::time::timeout(BACKEND_TIMEOUT, set).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => tracing::warn!(target: "node::cache", %err, "Redis set failed"),
                    Err(_) => tracing::warn!(target: "node::cache", "Redis set timed out"),
                }
            }
        }
    }
}

fn redis_key(key: &CacheKey) -> String {
    format!("mlbridge:result:{}", hex::encode(key))
}

/// `redis://user:secret@host:6379/0` as `redis://user:***@host:6379/0`: the user info up to the last `@` (a password
/// may hold `/` or `@`) loses its password, and a query (`?pass=...` is a password too) is dropped.
fn redact_password(url: &str) -> String {
    let url = url.split_once('?').map_or(url, |(u, _)| u);
    let Some((scheme, rest)) = url.split_once("://") else { return "(a Redis URL)".to_owned() };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => format!("{scheme}://{rest}"),
    }
}

#[cfg(test)]
mod tests {
    use mlbridge_sdk::TensorData;

    use super::*;

    #[test]
    fn redis_urls_are_shown_without_their_password() {
        assert_eq!(super::redact_password("redis://:s3cret@cache:6379"), "redis://:***@cache:6379");
        assert_eq!(super::redact_password("redis://u:p@ss@h:1/0"), "redis://u:***@h:1/0");
        assert_eq!(super::redact_password("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
        // base64 passwords hold '/', '+' and '='; unix sockets take the password in the query.
        assert_eq!(
            super::redact_password("redis://:abc+/def=@mlbridge-redis:6379"),
            "redis://:***@mlbridge-redis:6379"
        );
        assert_eq!(super::redact_password("redis+unix:///run/redis.sock?pass=s3cret"), "redis+unix:///run/redis.sock");
        assert_eq!(super::redact_password("s3cret"), "(a Redis URL)");
    }

    #[test]
    fn key_ignores_input_order_but_not_content_or_model() {
        let a = Tensor::new("a", vec![1, 2], TensorData::Int64(vec![1, 2])).unwrap();
        let b = Tensor::new("b", vec![1, 2], TensorData::Int64(vec![0, 1])).unwrap();
        let m1 = ModelId::of_bytes(b"m1");
        let m2 = ModelId::of_bytes(b"m2");
        assert_eq!(cache_key(&m1, &[a.clone(), b.clone()]), cache_key(&m1, &[b.clone(), a.clone()]));
        assert_ne!(cache_key(&m1, &[a.clone(), b.clone()]), cache_key(&m2, &[a.clone(), b.clone()]));
        let b2 = Tensor::new("b", vec![1, 2], TensorData::Int64(vec![0, 2])).unwrap();
        assert_ne!(cache_key(&m1, &[a.clone(), b]), cache_key(&m1, &[a, b2]));
    }

    #[tokio::test]
    async fn memory_cache_respects_ttl() {
        let cache = ResultCache::memory(1 << 20, Duration::from_millis(100));
        let out = Arc::new(vec![Tensor::new("o", vec![1], TensorData::Fp32(vec![1.0])).unwrap()]);
        cache.insert([1; 32], out.clone()).await;
        assert_eq!(cache.get(&[1; 32]).await.unwrap(), out);
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert!(cache.get(&[1; 32]).await.is_none());
    }
}
