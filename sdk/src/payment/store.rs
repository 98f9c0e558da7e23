//! The payer's durable record of its channels and of the cumulative amount signed on each (a `sled` database).
//!
//! A payer must never sign a lower or conflicting amount, even after a crash: the amount it may sign up to is
//! reserved on disk (flushed) *before* a voucher with it is signed. Reserving `reserve_ahead` prices at a time makes
//! that one disk write per `reserve_ahead` vouchers; after a restart signing resumes above the reservation, so a crash
//! costs the payer at most `reserve_ahead - 1` prices that no job used. Dropping the store (a clean exit) writes the
//! exact amounts back, so short-lived processes such as the CLI lose nothing.

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
    /// Highest amount reserved on disk (`signed <= reserved`; signing resumes above it after a restart).
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
    reserve_ahead: u64,
    channels: Mutex<HashMap<B256, ChannelRecord>>,
    /// Amounts of refused jobs below the top, per channel: amount -> price (reused before signing higher).
    returned: Mutex<HashMap<B256, std::collections::BTreeMap<U256, U256>>>,
}

fn store_error(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Store { path: path.to_owned(), reason: e.to_string() }
}

impl VoucherStore {
    /// Open (or create) the store at `path`. `reserve_ahead` >= 1 prices are reserved per disk write.
    pub fn open(path: &Path, reserve_ahead: u64) -> Result<Self> {
        let db = sled::open(path).map_err(|e| store_error(path, e))?;
        let mut channels = HashMap::new();
        for item in db.iter() {
            let (_, value) = item.map_err(|e| store_error(path, e))?;
            let mut rec: ChannelRecord = ciborium::from_reader(value.as_ref()).map_err(|e| store_error(path, e))?;
            // Resume above anything that may have been signed before a crash.
            rec.signed = rec.reserved;
            channels.insert(rec.channel_id, rec);
        }
        Ok(Self {
            db,
            path: path.to_owned(),
            reserve_ahead: reserve_ahead.max(1),
            channels: Mutex::new(channels),
            returned: Mutex::new(HashMap::new()),
        })
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

    /// Take the next cumulative amount on `channel` for a job of `price`: `signed + price`, reserved on disk first.
    /// Fails when the deposit does not cover it.
    pub fn next_amount(&self, channel: &B256, price: U256) -> Result<U256> {
        let mut map = self.lock();
        // A refused job's amount of the same price is used again first: the node never charged it.
        let mut returned = self.returned.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(free) = returned.get_mut(channel)
            && let Some(amount) = free.iter().find(|(_, p)| **p == price).map(|(a, _)| *a)
        {
            free.remove(&amount);
            return Ok(amount);
        }
        drop(returned);
        let rec = map.get_mut(channel).ok_or(Error::NoChannel { channel: *channel })?;
        let amount = rec.signed + price;
        if amount > rec.deposit {
            return Err(Error::ChannelExhausted { channel: *channel, deposit: rec.deposit, needed: amount });
        }
        if amount > rec.reserved {
            let mut next = rec.clone();
            next.reserved = (amount + price * U256::from(self.reserve_ahead - 1)).min(rec.deposit);
            next.signed = amount;
            self.write(&next)?;
            *rec = next;
        } else {
            rec.signed = amount;
        }
        Ok(amount)
    }

    /// Give back the amount of a job the node refused before doing any work: the top amount is unsigned again,
    /// one below the top is kept for the next job of the same price.
    pub fn give_back(&self, channel: &B256, amount: U256, price: U256) {
        let mut map = self.lock();
        let Some(rec) = map.get_mut(channel) else { return };
        let mut returned = self.returned.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let free = returned.entry(*channel).or_default();
        free.insert(amount, price);
        // Unsign from the top down while the top was given back.
        while let Some(p) = free.remove(&rec.signed) {
            rec.signed -= p;
        }
    }
}

impl Drop for VoucherStore {
    /// A clean exit: give back the unused reservations, so the next process resumes exactly where this one stopped.
    fn drop(&mut self) {
        let records: Vec<ChannelRecord> = self.lock().values().filter(|r| r.reserved > r.signed).cloned().collect();
        for mut rec in records {
            rec.reserved = rec.signed;
            if let Err(err) = self.write(&rec) {
                tracing::warn!(target: "sdk::payment", %err, "cannot release the voucher reservation; the next run skips it");
            }
        }
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
    fn amounts_grow_and_survive_a_restart_without_going_back() {
        let dir = tempfile::tempdir().unwrap();
        let (live, crashed) = (dir.path().join("live"), dir.path().join("crashed"));
        let ch = B256::repeat_byte(1);
        {
            let s = VoucherStore::open(&live, 4).unwrap();
            s.upsert(record(1, 1000)).unwrap();
            let amounts: Vec<U256> = (0..5).map(|_| s.next_amount(&ch, U256::from(10u64)).unwrap()).collect();
            assert_eq!(amounts, (1..=5u64).map(|i| U256::from(10 * i)).collect::<Vec<_>>());
            // Reserved in blocks of 4 prices: after 50 signed, 80 is reserved on disk.
            assert_eq!(s.get(&ch).unwrap().reserved, U256::from(80u64));
            // What a crash now would leave on disk.
            copy_dir(&live, &crashed);
        }
        // After the crash, signing resumes above the reservation, never at or below anything signed before.
        let s = VoucherStore::open(&crashed, 4).unwrap();
        assert_eq!(s.next_amount(&ch, U256::from(10u64)).unwrap(), U256::from(90u64));
        // After a clean exit the reservation was given back: the next process continues exactly.
        let s = VoucherStore::open(&live, 4).unwrap();
        assert_eq!(s.next_amount(&ch, U256::from(10u64)).unwrap(), U256::from(60u64));
    }

    #[test]
    fn deposit_bounds_amounts_and_refused_jobs_give_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = VoucherStore::open(dir.path(), 1).unwrap();
        let ch = B256::repeat_byte(2);
        s.upsert(record(2, 25)).unwrap();
        let a = s.next_amount(&ch, U256::from(10u64)).unwrap();
        s.give_back(&ch, a, U256::from(10u64));
        assert_eq!(s.next_amount(&ch, U256::from(10u64)).unwrap(), a, "a refused job's amount is reused");
        assert_eq!(s.next_amount(&ch, U256::from(10u64)).unwrap(), U256::from(20u64));
        assert!(matches!(s.next_amount(&ch, U256::from(10u64)), Err(Error::ChannelExhausted { .. })));
        assert!(s.best_for(Address::repeat_byte(9), U256::from(10u64), 0, 60).is_none(), "5 wei left");
        // Refused out of order: 10 (below the top) is reused first, then 20 is unsigned once 10 is gone too.
        s.give_back(&ch, U256::from(10u64), U256::from(10u64));
        assert_eq!(s.get(&ch).unwrap().signed, U256::from(20u64));
        assert_eq!(s.next_amount(&ch, U256::from(10u64)).unwrap(), U256::from(10u64));
        s.give_back(&ch, U256::from(10u64), U256::from(10u64));
        s.give_back(&ch, U256::from(20u64), U256::from(10u64));
        assert_eq!(s.get(&ch).unwrap().signed, U256::ZERO, "both unsigned");
        assert!(s.best_for(Address::repeat_byte(9), U256::from(5u64), 0, 60).is_some());
    }
}
