//! The payer's durable record of its channels and of the cumulative amount signed on each (a `sled` database).
//!
//! A payer must never sign a lower or conflicting amount, even after a crash: the amount is written to disk
//! (flushed) *before* a voucher with it is signed ([`VoucherStore::sign_to`]). Vouchers pay ahead for a credit window
//! of jobs (see [`super::credit`]), so this is one disk write per window, not per job.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use alloy::primitives::{Address, B256, U256};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What the payer knows about one of its channels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelRecord {
    /// The channel.
    pub channel_id: B256,
    /// Who it pays (the node operator).
    pub payee: Address,
    /// Deposit (as far as this payer sent it).
    pub deposit: U256,
    /// Unix seconds after which it cannot be redeemed.
    pub expiry: u64,
    /// Block the channel was opened in.
    pub opened_block: u64,
    /// Highest cumulative amount signed so far.
    pub signed: U256,
    /// Highest amount written before signing (equals `signed`; kept for stores written by older versions, which
    /// reserved ahead: signing resumes above it).
    pub reserved: U256,
    /// Unix seconds when a close started by the payer ends (0 = not closing).
    pub closes_at: u64,
    /// The payer withdrew the rest; the channel is finished.
    pub withdrawn: bool,
}

impl ChannelRecord {
    /// Deposit not yet promised in vouchers.
    pub fn remaining(&self) -> U256 {
        self.deposit.saturating_sub(self.signed)
    }

    /// Whether vouchers on it can still be redeemed by the payee at `now` with `margin` seconds to spare.
    pub fn usable(&self, now: u64, margin: u64) -> bool {
        !self.withdrawn && self.closes_at == 0 && self.expiry > now + margin
    }
}

/// The payer's channel store. Share it behind an `Arc`; every method is safe to call concurrently.
#[derive(Debug)]
pub struct VoucherStore {
    db: sled::Db,
    path: PathBuf,
    channels: Mutex<HashMap<B256, ChannelRecord>>,
}

fn store_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Store { path: path.to_owned(), reason: e.to_string() }
}

impl VoucherStore {
    /// Open (or create) the store at `path`.
    pub fn open(path: &Path) -> Result<Self> {
        let db = sled::open(path).map_err(|e| store_error(path, e))?;
        let mut channels = HashMap::new();
        for item in db.iter() {
            let (_, value) = item.map_err(|e| store_error(path, e))?;
            let mut rec: ChannelRecord = ciborium::from_reader(value.as_ref()).map_err(|e| store_error(path, e))?;
            // Resume above anything that may have been signed before a crash.
            rec.signed = rec.reserved;
            channels.insert(rec.channel_id, rec);
        }
        Ok(Self { db, path: path.to_owned(), channels: Mutex::new(channels) })
    }

    /// Where the store lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write(&self, rec: &ChannelRecord) -> Result<()> {
        let mut bytes = Vec::new();
        ciborium::into_writer(rec, &mut bytes).map_err(|e| store_error(&self.path, e))?;
        self.db.insert(rec.channel_id.as_slice(), bytes).map_err(|e| store_error(&self.path, e))?;
        self.db.flush().map_err(|e| store_error(&self.path, e))?;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<B256, ChannelRecord>> {
        self.channels.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Record a channel (new, or changed on chain: top-up, close, withdrawal). Amounts already signed are kept.
    pub fn upsert(&self, mut rec: ChannelRecord) -> Result<()> {
        let mut map = self.lock();
        if let Some(old) = map.get(&rec.channel_id) {
            rec.signed = rec.signed.max(old.signed);
            rec.reserved = rec.reserved.max(old.reserved);
        }
        self.write(&rec)?;
        map.insert(rec.channel_id, rec);
        Ok(())
    }

    /// One channel.
    pub fn get(&self, channel: &B256) -> Option<ChannelRecord> {
        self.lock().get(channel).cloned()
    }

    /// Every channel, newest first.
    pub fn list(&self) -> Vec<ChannelRecord> {
        let mut v: Vec<_> = self.lock().values().cloned().collect();
        v.sort_by_key(|c| std::cmp::Reverse(c.opened_block));
        v
    }

    /// The usable channel to `payee` with the most deposit left that covers `price`.
    pub fn best_for(&self, payee: Address, price: U256, now: u64, margin: u64) -> Option<ChannelRecord> {
        self.lock()
            .values()
            .filter(|c| c.payee == payee && c.usable(now, margin) && c.remaining() >= price)
            .max_by_key(|c| c.remaining())
            .cloned()
    }

    /// Raise the amount signed on `channel` to `amount`, on disk (flushed) before the caller signs a voucher for it.
    /// Fails when the deposit does not cover it; an amount at or below what was signed is refused (a payer never
    /// signs the same or a lower amount twice).
    pub fn sign_to(&self, channel: &B256, amount: U256) -> Result<()> {
        let mut map = self.lock();
        let rec = map.get_mut(channel).ok_or(Error::NoChannel { channel: *channel })?;
        if amount > rec.deposit {
            return Err(Error::ChannelExhausted { channel: *channel, deposit: rec.deposit, needed: amount });
        }
        if amount <= rec.signed {
            return Err(store_error(
                &self.path,
                format!("{amount} wei is not above the {} already signed", rec.signed),
            ));
        }
        let mut next = rec.clone();
        next.signed = amount;
        next.reserved = amount;
        self.write(&next)?;
        *rec = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u8, deposit: u64) -> ChannelRecord {
        ChannelRecord {
            channel_id: B256::repeat_byte(id),
            payee: Address::repeat_byte(9),
            deposit: U256::from(deposit),
            expiry: u64::MAX / 2,
            opened_block: u64::from(id),
            signed: U256::ZERO,
            reserved: U256::ZERO,
            closes_at: 0,
            withdrawn: false,
        }
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    #[test]
    fn amounts_only_grow_are_on_disk_before_signing_and_stay_within_the_deposit() {
        let dir = tempfile::tempdir().unwrap();
        let (live, crashed) = (dir.path().join("live"), dir.path().join("crashed"));
        let ch = B256::repeat_byte(1);
        {
            let s = VoucherStore::open(&live).unwrap();
            s.upsert(record(1, 1000)).unwrap();
            s.sign_to(&ch, U256::from(10u64)).unwrap();
            s.sign_to(&ch, U256::from(50u64)).unwrap();
            assert!(s.sign_to(&ch, U256::from(50u64)).is_err(), "the same amount twice");
            assert!(s.sign_to(&ch, U256::from(40u64)).is_err(), "a lower amount");
            assert!(matches!(s.sign_to(&ch, U256::from(1001u64)), Err(Error::ChannelExhausted { .. })));
            // What a crash now would leave on disk.
            copy_dir(&live, &crashed);
        }
        let s = VoucherStore::open(&crashed).unwrap();
        assert_eq!(s.get(&ch).unwrap().signed, U256::from(50u64), "what was signed is on disk");
        assert!(s.sign_to(&ch, U256::from(50u64)).is_err());
        s.sign_to(&ch, U256::from(60u64)).unwrap();
        // A top-up read from the chain keeps the amounts signed.
        s.upsert(ChannelRecord { deposit: U256::from(2000u64), ..record(1, 0) }).unwrap();
        assert_eq!(s.get(&ch).unwrap().signed, U256::from(60u64));
        assert!(s.best_for(Address::repeat_byte(9), U256::from(1940u64), 0, 60).is_some());
        assert!(s.best_for(Address::repeat_byte(9), U256::from(1941u64), 0, 60).is_none());
    }
}
