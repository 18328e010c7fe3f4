//! Object stores for the claim check (the `object_stores:` section): a
//! payload too large for its broker is kept here and the message carries
//! its key. Two kinds, through the `object_store` crate: a local directory
//! and S3 (or any S3-compatible server). [`Blobs`] is what the rest of the
//! gateway sees: put a payload whole or in pieces, read it back as a stream,
//! delete it, and list what is older than a retention.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::SystemTime,
};

use bytes::Bytes;
use futures::{stream::BoxStream, StreamExt as _, TryStreamExt as _};
use object_store::{
    aws::AmazonS3Builder, local::LocalFileSystem, path::Path, ObjectStore, ObjectStoreExt as _,
    PutPayload, WriteMultipart,
};
use serde::Deserialize;

use crate::error::{Error, ErrorKind};

/// Most parts of one upload in flight at once.
const UPLOAD_CONCURRENCY: usize = 2;
/// Size of an upload's parts (S3's smallest but for the last): an upload
/// holds at most a part being filled and two in flight, 15 MiB.
pub const PART_BYTES: usize = 5 * 1024 * 1024;

/// `object_stores.<name>`: where one store keeps its objects.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ObjectStoreSpec {
    /// A directory of this machine (every instance of a cluster must see
    /// the same one: a shared volume).
    Local { path: PathBuf },
    /// An S3 bucket, on AWS or any S3-compatible server.
    S3 {
        bucket: String,
        /// The server's URL; unset for AWS itself.
        #[serde(default)]
        endpoint: Option<String>,
        #[serde(default)]
        region: Option<String>,
        /// Credentials; unset, the usual AWS environment and instance
        /// sources are asked.
        #[serde(default)]
        access_key_id: Option<String>,
        #[serde(default)]
        secret_access_key: Option<String>,
        /// Allow a plain `http://` endpoint (a test server on loopback).
        #[serde(default)]
        allow_http: bool,
    },
}

impl ObjectStoreSpec {
    /// What `prism validate` finds wrong with it, if anything.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        match self {
            ObjectStoreSpec::Local { path } => {
                if !path.is_absolute() {
                    out.push(format!(
                        "path `{}` must be absolute (a relative one moves with the working \
                         directory)",
                        path.display()
                    ));
                }
            }
            ObjectStoreSpec::S3 {
                bucket,
                endpoint,
                access_key_id,
                secret_access_key,
                allow_http,
                ..
            } => {
                if bucket.is_empty() {
                    out.push("bucket must not be empty".into());
                }
                if access_key_id.is_some() != secret_access_key.is_some() {
                    out.push(
                        "access_key_id and secret_access_key go together: set both or neither"
                            .into(),
                    );
                }
                match endpoint {
                    Some(e) if e.starts_with("http://") && !allow_http => out.push(format!(
                        "endpoint `{e}` is plain http; set allow_http: true to allow it"
                    )),
                    Some(e) if !e.starts_with("http://") && !e.starts_with("https://") => {
                        out.push(format!("endpoint `{e}` must be an http:// or https:// URL"))
                    }
                    _ => {}
                }
            }
        }
        out
    }

    /// One line saying where it keeps objects (no secrets).
    pub fn describe(&self) -> String {
        match self {
            ObjectStoreSpec::Local { path } => format!("local directory {}", path.display()),
            ObjectStoreSpec::S3 {
                bucket, endpoint, ..
            } => match endpoint {
                Some(e) => format!("S3 bucket `{bucket}` at {e}"),
                None => format!("S3 bucket `{bucket}`"),
            },
        }
    }
}

/// One configured object store.
#[derive(Debug)]
pub struct Blobs {
    who: Arc<Who>,
    store: Arc<dyn ObjectStore>,
    /// Uploads dropped unfinished (their call went away): aborted by the
    /// next [`Blobs::clean_abandoned`], so no stored parts are left.
    abandoned: Arc<Abandoned>,
}

/// Uploads waiting to be aborted, each with what it holds (its share of a
/// bound on uploads, given back once aborted), and the wake-up of whoever
/// aborts them.
#[derive(Debug, Default)]
struct Abandoned {
    uploads: parking_lot::Mutex<Vec<(String, WriteMultipart, Option<Held>)>>,
    notify: tokio::sync::Notify,
}

/// A store's name and the count of its failed calls, shared by its reads
/// and uploads: every failure passes [`Who::failed`].
#[derive(Debug)]
struct Who {
    name: String,
    failures: Arc<AtomicU64>,
}

impl Who {
    fn failed(&self, doing: &str, key: &str, e: object_store::Error) -> Error {
        self.failures.fetch_add(1, Ordering::Relaxed);
        store_error(&self.name, doing, key, e)
    }
}

/// What an upload holds until it is finished or aborted.
pub type Held = tokio::sync::OwnedSemaphorePermit;

impl Blobs {
    /// Opens the store `name` (a local directory is created if missing);
    /// its failed calls are counted in `failures`.
    pub fn open(
        name: &str,
        spec: &ObjectStoreSpec,
        failures: Arc<AtomicU64>,
    ) -> Result<Blobs, String> {
        let store: Arc<dyn ObjectStore> = match spec {
            ObjectStoreSpec::Local { path } => {
                std::fs::create_dir_all(path).map_err(|e| {
                    format!(
                        "object store `{name}`: cannot create {}: {e}",
                        path.display()
                    )
                })?;
                Arc::new(
                    LocalFileSystem::new_with_prefix(path)
                        .map_err(|e| format!("object store `{name}`: {e}"))?,
                )
            }
            ObjectStoreSpec::S3 {
                bucket,
                endpoint,
                region,
                access_key_id,
                secret_access_key,
                allow_http,
            } => {
                // HTTPS endpoints: rustls on ring, like the rest of the
                // process (a provider already installed is kept).
                let _ = rustls::crypto::ring::default_provider().install_default();
                let mut b = AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_allow_http(*allow_http);
                if let Some(e) = endpoint {
                    b = b.with_endpoint(e);
                }
                b = b.with_region(region.as_deref().unwrap_or("us-east-1"));
                if let (Some(k), Some(s)) = (access_key_id, secret_access_key) {
                    b = b.with_access_key_id(k).with_secret_access_key(s);
                }
                Arc::new(
                    b.build()
                        .map_err(|e| format!("object store `{name}`: {e}"))?,
                )
            }
        };
        Ok(Blobs {
            who: Arc::new(Who {
                name: name.to_string(),
                failures,
            }),
            store,
            abandoned: Arc::default(),
        })
    }

    /// Stores `payload` whole under `key`.
    pub async fn put(&self, key: &str, payload: Vec<u8>) -> Result<(), Error> {
        self.store
            .put(&Path::from(key), PutPayload::from(payload))
            .await
            .map(|_| ())
            .map_err(|e| self.failed("storing", key, e))
    }

    /// Begins storing an object under `key` in pieces.
    pub async fn upload(&self, key: &str) -> Result<Upload, Error> {
        let upload = self
            .store
            .put_multipart(&Path::from(key))
            .await
            .map_err(|e| self.failed("storing", key, e))?;
        Ok(Upload {
            writer: Some(WriteMultipart::new_with_chunk_size(upload, PART_BYTES)),
            who: self.who.clone(),
            key: key.to_string(),
            held: None,
            abandoned: self.abandoned.clone(),
        })
    }

    /// Aborts the uploads dropped unfinished since the last call, removing
    /// their stored parts; returns how many.
    pub async fn clean_abandoned(&self) -> usize {
        let abandoned = std::mem::take(&mut *self.abandoned.uploads.lock());
        let n = abandoned.len();
        for (key, writer, _held) in abandoned {
            if let Err(e) = writer.abort().await {
                tracing::warn!(store = %self.who.name, object = %key, error = %e, "an abandoned upload was not cleaned up");
            }
        }
        n
    }

    /// Resolves when an upload was dropped unfinished.
    pub async fn abandoned(&self) {
        self.abandoned.notify.notified().await
    }

    /// The object `key`: its size and its bytes as they arrive.
    pub async fn read(
        &self,
        key: &str,
    ) -> Result<(u64, BoxStream<'static, Result<Bytes, Error>>), Error> {
        let got = self
            .store
            .get(&Path::from(key))
            .await
            .map_err(|e| self.failed("reading", key, e))?;
        let size = got.meta.size;
        let (who, key) = (self.who.clone(), key.to_string());
        let bytes = got
            .into_stream()
            .map_err(move |e| who.failed("reading", &key, e))
            .boxed();
        Ok((size, bytes))
    }

    /// Deletes `key`; one already gone counts as deleted.
    pub async fn delete(&self, key: &str) -> Result<(), Error> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.failed("deleting", key, e)),
        }
    }

    /// Whether `key` is stored.
    pub async fn exists(&self, key: &str) -> Result<bool, Error> {
        match self.store.head(&Path::from(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(self.failed("reading", key, e)),
        }
    }

    /// The keys of the objects under `prefix` last written before `before`.
    pub async fn older_than(&self, prefix: &str, before: SystemTime) -> Result<Vec<String>, Error> {
        let listed: Vec<_> = self
            .store
            .list(Some(&Path::from(prefix)))
            .try_collect()
            .await
            .map_err(|e| self.failed("listing", prefix, e))?;
        Ok(listed
            .into_iter()
            .filter(|meta| SystemTime::from(meta.last_modified) < before)
            .map(|meta| meta.location.to_string())
            .collect())
    }

    fn failed(&self, doing: &str, key: &str, e: object_store::Error) -> Error {
        self.who.failed(doing, key, e)
    }
}

/// A store's failure as the client sees it: a missing object is DATA_LOSS
/// (its message can never be delivered whole), anything else UNAVAILABLE.
fn store_error(store: &str, doing: &str, key: &str, e: object_store::Error) -> Error {
    let error = match e {
        object_store::Error::NotFound { .. } => Error::new(
            ErrorKind::DataLoss,
            "CLAIM_CHECK_OBJECT_MISSING",
            format!(
                "object `{key}` of store `{store}` is gone (deleted after its retention or by \
                 hand); its message's payload cannot be delivered"
            ),
        ),
        other => Error::new(
            ErrorKind::Unavailable,
            "OBJECT_STORE_UNAVAILABLE",
            format!("object store `{store}` failed {doing} `{key}`: {other}; retry with backoff"),
        )
        .with(
            "retry_after_ms",
            super::kv::UNAVAILABLE_RETRY_MS.to_string(),
        ),
    };
    error.with("object_store", store).with("object", key)
}

/// An object being stored in pieces. Dropped without [`Upload::finish`] or
/// [`Upload::abort`] (its call went away), it is handed to its store's
/// [`Blobs::clean_abandoned`].
pub struct Upload {
    writer: Option<WriteMultipart>,
    who: Arc<Who>,
    key: String,
    /// Given back when the upload is finished or aborted.
    held: Option<Held>,
    abandoned: Arc<Abandoned>,
}

impl Upload {
    /// Keeps `held` until the upload is finished or aborted (abandoned, until
    /// [`Blobs::clean_abandoned`] aborted it).
    pub fn hold(&mut self, held: Held) {
        self.held = Some(held);
    }

    /// The object's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    fn writer(&mut self) -> &mut WriteMultipart {
        self.writer
            .as_mut()
            .expect("an upload's writer is taken only by finish and abort, which consume it")
    }

    /// Adds `piece`, a part's worth at a time, waiting while too many
    /// parts are in flight (so a large piece never starts more).
    pub async fn write(&mut self, piece: &[u8]) -> Result<(), Error> {
        for slice in piece.chunks(PART_BYTES) {
            let waited = self.writer().wait_for_capacity(UPLOAD_CONCURRENCY).await;
            waited.map_err(|e| self.who.failed("storing", &self.key, e))?;
            self.writer().write(slice);
        }
        Ok(())
    }

    /// Stores the object.
    pub async fn finish(mut self) -> Result<(), Error> {
        let writer = self.writer.take();
        let done = match writer {
            Some(w) => w.finish().await.map(|_| ()),
            None => Ok(()),
        };
        done.map_err(|e| self.who.failed("storing", &self.key, e))
    }

    /// Gives the upload up, removing what was stored of it.
    pub async fn abort(mut self) {
        if let Some(w) = self.writer.take() {
            if let Err(e) = w.abort().await {
                tracing::warn!(object = %self.key, error = %e, "an abandoned upload was not cleaned up");
            }
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(w) = self.writer.take() {
            let entry = (std::mem::take(&mut self.key), w, self.held.take());
            self.abandoned.uploads.lock().push(entry);
            self.abandoned.notify.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_say_what_is_wrong() {
        let local = ObjectStoreSpec::Local {
            path: "relative".into(),
        };
        assert_eq!(local.problems().len(), 1);
        let s3 = ObjectStoreSpec::S3 {
            bucket: String::new(),
            endpoint: Some("http://127.0.0.1:9".into()),
            region: None,
            access_key_id: Some("k".into()),
            secret_access_key: None,
            allow_http: false,
        };
        let problems = s3.problems();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[2].contains("allow_http"), "{problems:?}");
    }

    #[tokio::test]
    async fn a_local_store_keeps_reads_and_deletes_objects() {
        let dir = std::env::temp_dir().join(format!("prism-blob-{}", std::process::id()));
        let blobs = Blobs::open(
            "local",
            &ObjectStoreSpec::Local { path: dir.clone() },
            Arc::default(),
        )
        .unwrap();
        blobs.put("ns/a", vec![1, 2, 3]).await.unwrap();
        let mut upload = blobs.upload("ns/b").await.unwrap();
        let piece = vec![7u8; 1 << 20];
        for _ in 0..10 {
            upload.write(&piece).await.unwrap();
        }
        upload.finish().await.unwrap();
        let (size, stream) = blobs.read("ns/b").await.unwrap();
        assert_eq!(size, 10 << 20);
        let bytes: Vec<Bytes> = stream.try_collect().await.unwrap();
        assert_eq!(bytes.iter().map(Bytes::len).sum::<usize>(), 10 << 20);
        assert!(bytes.iter().all(|b| b.iter().all(|&x| x == 7)));
        let later = SystemTime::now() + std::time::Duration::from_secs(60);
        let old = blobs.older_than("ns", later).await.unwrap();
        assert_eq!(old.len(), 2, "{old:?}");
        assert!(blobs
            .older_than("ns", SystemTime::UNIX_EPOCH)
            .await
            .unwrap()
            .is_empty());
        blobs.delete("ns/a").await.unwrap();
        blobs.delete("ns/a").await.unwrap();
        assert!(!blobs.exists("ns/a").await.unwrap());
        let missing = blobs.read("ns/a").await.err().unwrap();
        assert_eq!(missing.reason, "CLAIM_CHECK_OBJECT_MISSING");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
