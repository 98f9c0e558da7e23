//! The durable payment ledger (`sled`): per channel the highest accepted voucher, what was charged and what is
//! redeemed; a record of every paid job for the audit window; the settlements made; the chain watcher's confirmed
//! view of our channels (so a restarted node keeps serving confirmed channels while the RPC is down).
//!
//! Writers insert and then [`Ledger::flush`]; a voucher is on disk before the job's answer leaves the node.
//! Flushes are group commits: one thread runs sled's (blocking) flush for every caller waiting at that moment, so
//! concurrent jobs share one fsync. (sled 0.34's own `flush_async` can deadlock when called concurrently, see
//! spacejam/sled#1308, so it is not used.)
//!
//! Channel entries and job records are staged in memory and written to sled by that same thread just before each
//! flush: a channel charged by a thousand jobs between two commits is written once, and the jobs of one commit are
//! one record of the job log (keyed by their newest time, so pruning drops whole commits). Reads see staged writes.
//! Nothing is lost by staging that the unflushed sled writes would have kept: both reach the disk at the next flush.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use alloy::primitives::{Address, B256, U256};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What the node holds on one channel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelEntry {
    /// The channel.
    pub channel_id: B256,
    /// Its payer.
    pub payer: Address,
    /// Highest accepted voucher amount (what settlement redeems).
    pub best_amount: U256,
    /// Its 65-byte signature.
    pub best_signature: Vec<u8>,
    /// Sum of the prices of answered jobs.
    pub charged: U256,
    /// Jobs answered.
    pub jobs: u64,
    /// Redeemed on chain (confirmed), as settlement last saw it.
    pub redeemed: U256,
    /// Jobs covered by the redeemed amount (for gas per job).
    pub jobs_settled: u64,
    /// Redemption deadline (unix seconds) from the chain view.
    pub deadline: u64,
    /// Block of the redemption that brought `redeemed` to its value (0 if unknown). Once the confirmed chain view
    /// has applied this block and shows less, a reorg deeper than the confirmation depth undid it.
    #[serde(default)]
    pub redeemed_block: u64,
    /// Why the contract refused to redeem it at the last attempt, if it did. While set, the gate accepts no more
    /// work on the channel; settlement keeps retrying unless the failure is permanent.
    pub failed: Option<String>,
    /// Whether that refusal is final (the channel stopped being redeemable). Records written before this field
    /// existed read as `false`: their channel is retried once and marked again if the reason still holds.
    #[serde(default)]
    pub failed_permanently: bool,
    /// Who brought the best voucher (a keccak of the libp2p peer id or of an HTTP client's credit key): the only
    /// requester whose jobs may draw on the credit it paid ahead.
    #[serde(default)]
    pub spender: Option<B256>,
}

impl ChannelEntry {
    /// Accepted but not yet redeemed, wei (zero once the channel can never be redeemed).
    pub fn unredeemed(&self) -> U256 {
        if self.failed_permanently { U256::ZERO } else { self.best_amount.saturating_sub(self.redeemed) }
    }
}

/// One paid job, kept for the audit window.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The client's job id.
    pub job_id: B256,
    /// The channel that paid.
    pub channel_id: B256,
    /// The weights that ran.
    pub model_id: B256,
    /// sha256 of the inputs.
    pub input_hash: B256,
    /// sha256 of the outputs.
    pub output_hash: B256,
    /// Price charged, wei.
    pub price: U256,
    /// The voucher amount that came with it.
    pub voucher_amount: U256,
    /// Unix milliseconds.
    pub at_ms: u64,
}

/// A confirmed redemption transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettlementRecord {
    /// The transaction.
    pub tx_hash: B256,
    /// Block it was confirmed in.
    pub block: u64,
    /// Vouchers redeemed.
    pub channels: u32,
    /// Jobs newly paid by it.
    pub jobs: u64,
    /// Newly redeemed, wei (our share plus the protocol fee).
    pub amount: U256,
    /// Protocol fee sent to ValidatorRewards, wei.
    pub protocol_fee: U256,
    /// Gas used.
    pub gas_used: u64,
    /// What the gas cost, wei.
    pub gas_cost: U256,
    /// Unix milliseconds.
    pub at_ms: u64,
}

/// Group commit: callers take a ticket and wait until a flush that started after their ticket has finished; staged
/// writes nobody waits for are flushed within the commit interval.
#[derive(Debug)]
struct Flusher {
    tickets: Arc<AtomicU64>,
    wake: Option<std::sync::mpsc::SyncSender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Highest ticket made durable, and the error of the last flush if it failed.
    flushed: tokio::sync::watch::Receiver<(u64, Option<String>)>,
}

impl Flusher {
    fn start(db: sled::Db, staged: Arc<Staged>, interval: std::time::Duration) -> Self {
        use std::sync::mpsc::RecvTimeoutError;
        let tickets = Arc::new(AtomicU64::new(0));
        let (wake, woken) = std::sync::mpsc::sync_channel::<()>(1);
        let (done, flushed) = tokio::sync::watch::channel((0u64, None));
        let (issued, pending) = (tickets.clone(), staged.dirty.clone());
        let thread = std::thread::Builder::new()
            .name("ledger-flush".into())
            .spawn(move || {
                // Ends when every Ledger handle (and so the sender) is gone.
                loop {
                    match woken.recv_timeout(interval) {
                        Ok(()) => {}
                        Err(RecvTimeoutError::Timeout) if pending.load(Ordering::SeqCst) => {}
                        Err(RecvTimeoutError::Timeout) => continue,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                    pending.store(false, Ordering::SeqCst);
                    let upto = issued.load(Ordering::SeqCst);
                    // Everything staged before `upto` was issued is written before the flush.
                    let outcome = staged.write().and_then(|()| db.flush().map(|_| ())).err().map(|e| e.to_string());
                    if let Some(err) = &outcome {
                        // Tried again at the next tick (what was staged stays staged until it is written).
                        pending.store(true, Ordering::SeqCst);
                        tracing::error!(target: "node::payment", %err, "the ledger commit failed; retrying");
                    }
                    let _ = done.send((upto, outcome));
                }
                // Whatever was written last is made durable on a clean stop.
                if (pending.load(Ordering::SeqCst) || !staged.is_empty())
                    && let Err(err) = staged.write().and_then(|()| db.flush().map(|_| ()))
                {
                    tracing::error!(target: "node::payment", %err, "the ledger's last commit failed");
                }
            })
            .expect("spawning the ledger flush thread");
        Self { tickets, wake: Some(wake), thread: Some(thread), flushed }
    }

    async fn flush(&self) -> std::result::Result<(), String> {
        let ticket = self.tickets.fetch_add(1, Ordering::SeqCst) + 1;
        // A pending wake-up already covers us if the channel is full.
        if let Some(wake) = &self.wake {
            let _ = wake.try_send(());
        }
        let mut flushed = self.flushed.clone();
        loop {
            {
                let (upto, err) = &*flushed.borrow_and_update();
                if *upto >= ticket {
                    return err.clone().map_or(Ok(()), Err);
                }
            }
            flushed.changed().await.map_err(|_| "the ledger flush thread stopped".to_string())?;
        }
    }
}

impl Drop for Flusher {
    /// Stop the thread and wait for it, so the database (and its file lock) is released when the ledger is dropped.
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes waiting for the next commit: the newest entry of each channel changed since, and the jobs recorded since.
#[derive(Debug, Default)]
struct StagedWrites {
    channels: HashMap<B256, ChannelEntry>,
    jobs: Vec<JobRecord>,
}

/// The staged writes and the trees they go to. The lock is held while they are written, so a newer entry staged
/// meanwhile is never overwritten by an older one.
#[derive(Debug)]
struct Staged {
    writes: Mutex<StagedWrites>,
    db: sled::Db,
    channels: sled::Tree,
    job_log: sled::Tree,
    dirty: Arc<std::sync::atomic::AtomicBool>,
}

impl Staged {
    fn lock(&self) -> std::sync::MutexGuard<'_, StagedWrites> {
        self.writes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_empty(&self) -> bool {
        let staged = self.lock();
        staged.channels.is_empty() && staged.jobs.is_empty()
    }

    /// Write what is staged into the trees (not flushed).
    fn write(&self) -> sled::Result<()> {
        let mut staged = self.lock();
        if !staged.channels.is_empty() {
            let mut batch = sled::Batch::default();
            for (id, entry) in &staged.channels {
                batch.insert(id.as_slice(), cbor(entry));
            }
            self.channels.apply_batch(batch)?;
            staged.channels.clear();
        }
        if !staged.jobs.is_empty() {
            let newest = staged.jobs.iter().map(|j| j.at_ms).max().unwrap_or_default();
            let count = u32::try_from(staged.jobs.len()).unwrap_or(u32::MAX);
            self.job_log.insert(job_log_key(newest, self.db.generate_id()?, count), cbor(&staged.jobs))?;
            staged.jobs.clear();
        }
        Ok(())
    }
}

/// Most job records waiting for a commit (at 50 ms commits, tens of thousands are normal only while commits fail).
pub const MAX_STAGED_JOBS: usize = 200_000;

/// A job-log record's key: its newest job's time, a unique sequence number and its number of jobs (all big-endian,
/// so keys sort by time and pruning needs no decoding).
fn job_log_key(newest_ms: u64, seq: u64, count: u32) -> [u8; 20] {
    let mut key = [0u8; 20];
    key[..8].copy_from_slice(&newest_ms.to_be_bytes());
    key[8..16].copy_from_slice(&seq.to_be_bytes());
    key[16..].copy_from_slice(&count.to_be_bytes());
    key
}

/// The sled database and its trees.
#[derive(Clone, Debug)]
pub struct Ledger {
    db: sled::Db,
    flusher: Arc<Flusher>,
    staged: Arc<Staged>,
    path: PathBuf,
    channels: sled::Tree,
    /// Jobs recorded by earlier versions, one record each (read and pruned, no longer written).
    jobs: sled::Tree,
    jobs_by_time: sled::Tree,
    job_log: sled::Tree,
    settlements: sled::Tree,
    meta: sled::Tree,
}

fn cbor<T: Serialize>(v: &T) -> Vec<u8> {
    mlbridge_sdk::protocol::encode(v)
}

impl Ledger {
    /// Open (or create) the ledger at `path`. Only one process may hold it. Writes nobody waits for are flushed
    /// within 50 ms.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, std::time::Duration::from_millis(50))
    }

    /// [`Ledger::open`] with the group-commit interval of writes nobody waits for.
    pub fn open_with(path: &Path, commit_interval: std::time::Duration) -> Result<Self> {
        let fail = |e: sled::Error| Error::Ledger {
            path: path.to_owned(),
            reason: format!("{e} (is another mlbridge-node using this ledger folder?)"),
        };
        let db = sled::open(path).map_err(fail)?;
        let tree = |name: &str| db.open_tree(name).map_err(fail);
        let (channels, job_log) = (tree("channels")?, tree("job_log")?);
        let staged = Arc::new(Staged {
            writes: Mutex::default(),
            db: db.clone(),
            channels: channels.clone(),
            job_log: job_log.clone(),
            dirty: Arc::default(),
        });
        let interval = commit_interval.max(std::time::Duration::from_millis(1));
        Ok(Self {
            flusher: Arc::new(Flusher::start(db.clone(), staged.clone(), interval)),
            staged,
            channels,
            jobs: tree("jobs")?,
            jobs_by_time: tree("jobs_by_time")?,
            job_log,
            settlements: tree("settlements")?,
            meta: tree("meta")?,
            path: path.to_owned(),
            db,
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> Error {
        Error::Ledger { path: self.path.clone(), reason: e.to_string() }
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        ciborium::from_reader(bytes).map_err(|e| self.err(format!("corrupt record: {e}")))
    }

    /// Make everything inserted so far durable (a group commit shared with concurrent callers).
    pub async fn flush(&self) -> Result<()> {
        self.flusher.flush().await.map_err(|e| self.err(e))
    }

    /// One channel's entry (a staged one first).
    pub fn channel(&self, id: &B256) -> Result<Option<ChannelEntry>> {
        if let Some(entry) = self.staged.lock().channels.get(id) {
            return Ok(Some(entry.clone()));
        }
        match self.channels.get(id.as_slice()).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(self.decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Every channel entry.
    pub fn channels(&self) -> Result<Vec<ChannelEntry>> {
        let mut staged = self.staged.lock().channels.clone();
        let mut out = Vec::new();
        for kv in self.channels.iter() {
            let (key, value) = kv.map_err(|e| self.err(e))?;
            if let Some(entry) = staged.remove(key.as_ref()) {
                out.push(entry);
                continue;
            }
            // One unreadable record must not stop settlement of every other channel (the gate refuses that one).
            match self.decode(&value) {
                Ok(entry) => out.push(entry),
                Err(err) => tracing::error!(target: "node::payment", key = %alloy::hex::encode(&key), %err,
                    "skipping an unreadable channel record"),
            }
        }
        out.extend(staged.into_values());
        Ok(out)
    }

    /// Write raw bytes as a channel's record (tests of unreadable records).
    #[cfg(test)]
    pub(crate) fn put_raw_channel(&self, id: &B256, bytes: &[u8]) {
        self.staged.lock().channels.remove(id);
        self.channels.insert(id.as_slice(), bytes).unwrap();
    }

    /// Write a channel entry (staged; not flushed).
    pub fn put_channel(&self, entry: &ChannelEntry) -> Result<()> {
        self.staged.lock().channels.insert(entry.channel_id, entry.clone());
        self.staged.dirty.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Write a job record (staged; not flushed). Refused once commits have failed long enough for
    /// [`MAX_STAGED_JOBS`] to wait in memory: paid work then stops instead of piling up unsaved.
    pub fn put_job(&self, job: &JobRecord) -> Result<()> {
        let mut staged = self.staged.lock();
        if staged.jobs.len() >= MAX_STAGED_JOBS {
            return Err(
                self.err("the ledger's commits keep failing (is the disk full?); no more paid work until they pass")
            );
        }
        staged.jobs.push(job.clone());
        drop(staged);
        self.staged.dirty.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// One job record (a scan of the job log: for tests and inspection, not for serving).
    pub fn job(&self, id: &B256) -> Result<Option<JobRecord>> {
        if let Some(job) = self.staged.lock().jobs.iter().find(|j| j.job_id == *id) {
            return Ok(Some(job.clone()));
        }
        if let Some(v) = self.jobs.get(id.as_slice()).map_err(|e| self.err(e))? {
            return Ok(Some(self.decode(&v)?));
        }
        for kv in self.job_log.iter().rev() {
            let jobs: Vec<JobRecord> = self.decode(&kv.map_err(|e| self.err(e))?.1)?;
            if let Some(job) = jobs.into_iter().find(|j| j.job_id == *id) {
                return Ok(Some(job));
            }
        }
        Ok(None)
    }

    /// Number of job records held.
    pub fn job_count(&self) -> usize {
        let logged: usize = self
            .job_log
            .iter()
            .keys()
            .filter_map(|k| Some(u32::from_be_bytes(k.ok()?.get(16..20)?.try_into().ok()?) as usize))
            .sum();
        self.jobs.len() + logged + self.staged.lock().jobs.len()
    }

    /// Forget job records older than `before_ms` (whole commits whose newest job is older); returns how many.
    pub fn prune_jobs(&self, before_ms: u64) -> Result<usize> {
        let mut n = 0;
        for kv in self.jobs_by_time.range(..before_ms.to_be_bytes().to_vec()) {
            let (key, _) = kv.map_err(|e| self.err(e))?;
            self.jobs.remove(&key[8..]).map_err(|e| self.err(e))?;
            self.jobs_by_time.remove(&key).map_err(|e| self.err(e))?;
            n += 1;
        }
        for key in self.job_log.range(..before_ms.to_be_bytes().to_vec()).keys() {
            let key = key.map_err(|e| self.err(e))?;
            self.job_log.remove(&key).map_err(|e| self.err(e))?;
            n += key.get(16..20).and_then(|c| c.try_into().ok()).map_or(0, |c| u32::from_be_bytes(c) as usize);
        }
        Ok(n)
    }

    /// Record a confirmed settlement (not flushed). What is staged is written first, so the settlement never
    /// reaches the disk ahead of the channel entries it follows.
    pub fn put_settlement(&self, s: &SettlementRecord) -> Result<()> {
        self.staged.write().map_err(|e| self.err(e))?;
        let seq = self.db.generate_id().map_err(|e| self.err(e))?;
        self.settlements.insert(seq.to_be_bytes(), cbor(s)).map(|_| ()).map_err(|e| self.err(e))
    }

    /// The latest `n` settlements, newest first.
    pub fn settlements(&self, n: usize) -> Result<Vec<SettlementRecord>> {
        self.settlements.iter().rev().take(n).map(|kv| self.decode(&kv.map_err(|e| self.err(e))?.1)).collect()
    }

    /// A small named value (the chain watcher's saved view).
    pub fn meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        match self.meta.get(key).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(self.decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Save a small named value (not flushed).
    pub fn put_meta<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        self.meta.insert(key, cbor(value)).map(|_| ()).map_err(|e| self.err(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of a channel record before `failed_permanently` existed.
    #[derive(Serialize)]
    struct ChannelEntryV1 {
        channel_id: B256,
        payer: Address,
        best_amount: U256,
        best_signature: Vec<u8>,
        charged: U256,
        jobs: u64,
        redeemed: U256,
        jobs_settled: u64,
        deadline: u64,
        failed: Option<String>,
    }

    #[test]
    fn records_of_the_previous_version_still_read() {
        let old = ChannelEntryV1 {
            channel_id: B256::repeat_byte(1),
            payer: Address::repeat_byte(2),
            best_amount: U256::from(30u64),
            best_signature: vec![7; 65],
            charged: U256::from(30u64),
            jobs: 3,
            redeemed: U256::from(10u64),
            jobs_settled: 1,
            deadline: 99,
            failed: Some("expired".into()),
        };
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        ledger.put_raw_channel(&old.channel_id, &cbor(&old));
        let entry = ledger.channel(&old.channel_id).unwrap().unwrap();
        assert_eq!((entry.best_amount, entry.jobs, entry.redeemed), (old.best_amount, 3, old.redeemed));
        assert_eq!(entry.failed.as_deref(), Some("expired"));
        assert!(!entry.failed_permanently, "unknown: retried once, marked again if it still fails");
        // And a record this version cannot read at all is an error, never a default entry.
        ledger.put_raw_channel(&old.channel_id, &cbor(&"not a channel"));
        assert!(ledger.channel(&old.channel_id).is_err());
    }

    #[tokio::test]
    async fn records_survive_reopening_and_old_jobs_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let entry = ChannelEntry {
            channel_id: B256::repeat_byte(1),
            best_amount: U256::from(30u64),
            best_signature: vec![7; 65],
            charged: U256::from(30u64),
            jobs: 3,
            ..ChannelEntry::default()
        };
        let job = |id: u8, at_ms: u64| JobRecord {
            job_id: B256::repeat_byte(id),
            channel_id: entry.channel_id,
            model_id: B256::ZERO,
            input_hash: B256::ZERO,
            output_hash: B256::ZERO,
            price: U256::from(10u64),
            voucher_amount: U256::from(10u64),
            at_ms,
        };
        {
            let l = Ledger::open(dir.path()).unwrap();
            l.put_channel(&entry).unwrap();
            l.put_job(&job(1, 1_000)).unwrap();
            assert_eq!(l.channel(&entry.channel_id).unwrap(), Some(entry.clone()), "staged writes are read");
            assert_eq!(l.job(&B256::repeat_byte(1)).unwrap(), Some(job(1, 1_000)));
            l.flush().await.unwrap();
            // Jobs of one commit are one record of the log, pruned together once the newest is old enough.
            l.put_job(&job(2, 5_000)).unwrap();
            l.put_job(&job(3, 1_500)).unwrap();
            l.flush().await.unwrap();
            assert_eq!(l.job_count(), 3);
        }
        let l = Ledger::open(dir.path()).unwrap();
        assert_eq!(l.channel(&entry.channel_id).unwrap(), Some(entry.clone()));
        assert_eq!(l.channel(&entry.channel_id).unwrap().unwrap().unredeemed(), U256::from(30u64));
        assert_eq!(l.channels().unwrap(), vec![entry.clone()]);
        // A staged entry replaces the one on disk (once, not beside it).
        let newer = ChannelEntry { charged: U256::from(40u64), jobs: 4, ..entry.clone() };
        l.put_channel(&newer).unwrap();
        assert_eq!(l.channels().unwrap(), vec![newer.clone()]);
        assert_eq!(l.channel(&entry.channel_id).unwrap(), Some(newer));
        assert_eq!(l.job_count(), 3);
        assert_eq!(l.prune_jobs(2_000).unwrap(), 1);
        assert!(l.job(&B256::repeat_byte(1)).unwrap().is_none());
        assert_eq!(l.job(&B256::repeat_byte(3)).unwrap(), Some(job(3, 1_500)), "kept with its commit's newest");
        assert_eq!(l.prune_jobs(6_000).unwrap(), 2);
        assert_eq!(l.job_count(), 0);
    }

    #[test]
    fn jobs_of_the_previous_version_are_read_counted_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(dir.path()).unwrap();
        let job = JobRecord {
            job_id: B256::repeat_byte(9),
            channel_id: B256::repeat_byte(1),
            model_id: B256::ZERO,
            input_hash: B256::ZERO,
            output_hash: B256::ZERO,
            price: U256::from(10u64),
            voucher_amount: U256::from(10u64),
            at_ms: 1_000,
        };
        // One record per job, indexed by time: how versions before the job log wrote them.
        l.jobs.insert(job.job_id.as_slice(), cbor(&job)).unwrap();
        l.jobs_by_time.insert([job.at_ms.to_be_bytes().as_slice(), job.job_id.as_slice()].concat(), &[]).unwrap();
        assert_eq!((l.job(&job.job_id).unwrap(), l.job_count()), (Some(job.clone()), 1));
        assert_eq!(l.prune_jobs(2_000).unwrap(), 1);
        assert_eq!((l.job(&job.job_id).unwrap(), l.job_count()), (None, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_concurrent_flushes_all_complete() {
        // sled's own flush_async deadlocks here (spacejam/sled#1308); the group commit must not.
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(dir.path()).unwrap();
        let tasks: Vec<_> = (0..200u8)
            .map(|i| {
                let l = l.clone();
                tokio::spawn(async move {
                    l.put_meta(&format!("k{i}"), &i).unwrap();
                    l.flush().await.unwrap();
                })
            })
            .collect();
        let all = futures::future::join_all(tasks);
        let done = tokio::time::timeout(std::time::Duration::from_secs(20), all).await.expect("no deadlock");
        assert!(done.iter().all(Result::is_ok));
        assert_eq!(l.meta::<u8>("k199").unwrap(), Some(199));
    }
}
