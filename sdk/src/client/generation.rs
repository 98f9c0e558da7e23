//! Text generation over the network ([`Client::generate`]): pick a node that advertises the model, pay ahead for the
//! most the generation can cost, open the stream and relay its events to the caller while watching them — a node
//! that goes quiet mid-stream is given up on, a caller that goes away cancels, and a paid generation's end must
//! carry a receipt for exactly what it produced. What the node did not charge stays credit.

use std::sync::Arc;

use alloy::primitives::U256;
use libp2p::PeerId;
use tokio::sync::mpsc;
use tokio::time::{Duration, Instant};

use super::receipts::{self, GenerationJob};
use super::{Client, DEFAULT_PAID_MAX_TOKENS, Held, NodeInfo, Outcome, Tries, after_refusal, attempt_payment};
use crate::generate::{Cancel, GenerateEvent, GenerateRequest, GenerationPrices};
use crate::payment::{Payer, Payment};
use crate::protocol::{AdvertModel, ErrorKind, ProtocolError};
use crate::{Error, Result};

impl Client {
    /// Generate text with the model `request.model` names on a node that advertises it, least loaded first, trying
    /// the next when one cannot be reached or refuses at once. Returns the node and its events as they come (see
    /// [`crate::generate`]); dropping the receiver cancels the generation (its end, with a paid generation's receipt,
    /// is still read and checked here, within the request timeout). A node that sends nothing for the request
    /// timeout while the caller reads, or has not ended a generation of `max_tokens` after the request timeout plus
    /// `max_tokens` times [`ClientConfig::generation_token_time`](super::ClientConfig), ends the stream with an error
    /// (and is cancelled).
    ///
    /// With a payer, a node that charges is paid per token: the most the generation can cost (the prompt's bound
    /// and `max_tokens`, [`DEFAULT_PAID_MAX_TOKENS`] when the request names none, at the advertised prices) is paid
    /// ahead, and the end's receipt is checked ([`GenerateDone::receipt`](crate::generate::GenerateDone)): a bad one
    /// ends the stream with an error instead of the end. What the node did not charge stays credit.
    pub async fn generate(&self, mut request: GenerateRequest) -> Result<(PeerId, mpsc::Receiver<GenerateEvent>)> {
        // Our own seed, never the node's choice: a node picking seeds could look for the longest answer to bill.
        request.seed.get_or_insert_with(rand::random);
        let model = request.model.clone();
        let serves = |m: &&AdvertModel| {
            m.name == model.name
                && model.version.is_none_or(|v| v == m.version)
                && model.id.is_none_or(|id| id == m.model_id)
                && m.input_token_price_wei.is_some()
        };
        let mut nodes: Vec<NodeInfo> =
            self.nodes().await?.into_iter().filter(|n| n.models.iter().any(|m| serves(&m))).collect();
        nodes.sort_by_key(|n| n.outstanding);
        let mut last = Error::NoNodes { model: model.name.clone() };
        for node in nodes {
            let prices: Vec<_> = node
                .models
                .iter()
                .filter(serves)
                .map(|m| {
                    let input_wei = m.input_token_price_wei.unwrap_or_default();
                    (m.model_id, GenerationPrices { input_wei, output_wei: m.price_wei })
                })
                .collect();
            let payer = self.payer.as_ref().filter(|_| prices.iter().any(|(_, p)| !p.is_free()));
            if payer.is_some() {
                request.max_tokens = Some(request.max_tokens.unwrap_or(DEFAULT_PAID_MAX_TOKENS));
            }
            let job = GenerationJob { request: request.clone(), prices };
            match self.generate_on(&node, payer, job).await {
                Ok(rx) => return Ok((node.peer_id, rx)),
                // Funding failed, or our request or payment is at fault: another node would not help.
                Err(
                    e @ (Error::SpendLimit { .. }
                    | Error::Store { .. }
                    | Error::ChannelExhausted { .. }
                    | Error::PaymentRefused { .. }
                    | Error::Remote { kind: ErrorKind::BadInput, .. }),
                ) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// One generation on one node: pay (if it charges), open the stream, wait for its first event (a refusal comes
    /// first and alone), then hand the events to a [`Relay`].
    async fn generate_on(
        &self,
        node: &NodeInfo,
        payer: Option<&Arc<Payer>>,
        mut job: GenerationJob,
    ) -> Result<mpsc::Receiver<GenerateEvent>> {
        let most = job.cost_bound(u64::from(job.request.max_tokens.unwrap_or(0)));
        let mut next: Option<Payment> = None;
        let mut tries = Tries::default();
        loop {
            let payment = attempt_payment(payer.map(|p| &**p), &mut next, node.operator, most).await?;
            // Until the stream is handed over, whatever happens is reported to the payer (a refusal: nothing charged).
            let mut held = Held { payer: payer.map(|p| &**p), payment: payment.as_ref(), outcome: Outcome::Lost };
            if let (Some(payer), Some(p)) = (payer, &payment) {
                job.request.voucher = p.voucher.clone();
                job.request.channel = Some(p.channel_id);
                job.request.credit_key = Some(payer.credit_key(&p.channel_id));
            }
            let (mut events, cancel) = self.open_generation(node.peer_id, &job.request).await?;
            // A node that never answers must not hang the caller: bounded like a request.
            let Ok(first) = tokio::time::timeout(self.config.request_timeout, events.recv()).await else {
                // The node may have started (and charge what it produced): counted as possibly charged.
                drop(held);
                return Err(Error::Network(format!("node {} sent nothing within the request timeout", node.peer_id)));
            };
            let first = match first {
                Some(GenerateEvent::Error(e)) => {
                    held.outcome = if e.kind == ErrorKind::Internal { Outcome::Lost } else { Outcome::Refused };
                    drop(held);
                    next = after_refusal(payer.map(|p| &**p), payment.as_ref(), e, node.peer_id, &mut tries).await?;
                    continue;
                }
                Some(first) => first,
                // Closed before any event. libp2p-stream drops an inbound stream its node's accept loop is not ready
                // for (a zero-capacity hand-over), the likely cause of what a bench run saw when 8 generations opened
                // at once on a busy 2-core node: then the request was never read. A free one is opened again, twice
                // at most. A paid one is not: a node could read the voucher, close, and be paid again on each reopen.
                None if payment.is_none() && tries.reopens < 2 => {
                    tries.reopens += 1;
                    drop(held);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                None => return Err(Error::Network(format!("node {} closed the generation stream", node.peer_id))),
            };
            // The relay owns the payment's outcome from here.
            held.payment = None;
            drop(held);
            let (tx, rx) = mpsc::channel(256);
            // However steadily a node drips text, a generation of max_tokens ends in bounded time.
            let deadline = job.request.max_tokens.and_then(|m| {
                let most = self.config.generation_token_time.checked_mul(m)?;
                Instant::now().checked_add(self.config.request_timeout.checked_add(most)?)
            });
            let relay = Relay {
                events,
                cancel: Some(cancel),
                tx,
                paid: payer.zip(payment).map(|(payer, p)| (payer.clone(), p)),
                batches: self.batches.clone(),
                operator: node.operator,
                job,
                peer: node.peer_id,
                patience: self.config.request_timeout,
                deadline,
                gone: None,
            };
            tokio::spawn(relay.run(first));
            return Ok(rx);
        }
    }

    /// Open a generation stream to `peer` (a stream can meet a connection being replaced by two crossing dials:
    /// tried again at once, up to 3 times).
    async fn open_generation(
        &self,
        peer: PeerId,
        request: &GenerateRequest,
    ) -> Result<(mpsc::Receiver<GenerateEvent>, Cancel)> {
        let mut last = Error::Network(format!("node {peer} did not open a generation stream"));
        for _ in 0..3 {
            let attempt = tokio::time::timeout(
                self.config.request_timeout,
                crate::generate::open(&mut self.streams.clone().0, peer, request),
            )
            .await;
            match attempt {
                Ok(Ok(events)) => return Ok(events),
                Ok(Err(e)) => last = e,
                Err(_) => return Err(Error::Network(format!("node {peer} did not open a generation stream in time"))),
            }
        }
        Err(last)
    }
}

/// How a paid generation's stream ended, for the payer.
enum End {
    /// With a receipt that checked (the payer was told what it charged).
    Checked,
    /// With a receipt that did not; with what it charges when the node's only lie was a cancel we did not make
    /// (the receipt is otherwise good: that much the node can claim).
    BadReceipt(Option<U256>),
    /// With the node's refusal to go on (it is shutting down, say): a node ending a stream so says it charged
    /// nothing. (A node that did charge would find the payer's next voucher short and refuse it: only that node
    /// loses by the lie.)
    Uncharged,
    /// With no end at all.
    Missing,
}

/// What a paid stream that held `hold` and ended without a receipt that checked counts as consumed (`None`: the
/// check already told the payer).
fn consumed(end: &End, hold: U256) -> Option<U256> {
    match end {
        End::Checked => None,
        End::Uncharged => Some(U256::ZERO),
        // A receipt that is good but for a cancel we did not make: what it charges (a truncated answer, which the
        // caller is told is bad, is paid no more than it produced).
        End::BadReceipt(Some(signed)) => Some(*signed),
        // A node that lied otherwise, or sent no end at all (it dropped the stream, or missed its deadline once
        // cancelled), may have charged anything up to the hold: all of it counts, as for any job whose outcome is
        // unknown. Counting only the text that reached us would sign less than an honest node charged for tokens
        // still in flight, and the node would then refuse the channel.
        End::BadReceipt(None) | End::Missing => Some(hold),
    }
}

/// Passes one generation's events from the node to the caller.
struct Relay {
    events: mpsc::Receiver<GenerateEvent>,
    /// Taken when we cancel.
    cancel: Option<Cancel>,
    tx: mpsc::Sender<GenerateEvent>,
    /// The payer and the payment, for a node that charges.
    paid: Option<(Arc<Payer>, Payment)>,
    batches: Arc<receipts::BatchCache>,
    operator: alloy::primitives::Address,
    job: GenerationJob,
    peer: PeerId,
    /// The longest the node may stay silent while the caller reads, and how long its end may take once cancelled.
    patience: Duration,
    /// When the whole generation must have ended (a node dripping text just within the patience is given up on too).
    deadline: Option<Instant>,
    /// Once we stopped listening for the caller (it went away, or the node stalled): when the end must have come.
    gone: Option<Instant>,
}

impl Relay {
    async fn run(mut self, first: GenerateEvent) {
        let mut next = Some(first);
        let mut end_was = End::Missing;
        while let Some(event) = next.take() {
            let event = match event {
                GenerateEvent::Done(done) if self.paid.is_some() => match self.check(&done) {
                    Ok(()) => {
                        end_was = End::Checked;
                        GenerateEvent::Done(done)
                    }
                    Err((reason, signed)) => {
                        tracing::warn!(target: "sdk::client", peer = %self.peer, %reason, "bad generation receipt");
                        end_was = End::BadReceipt(signed);
                        let message = format!("bad receipt from {}: {reason}", self.peer);
                        GenerateEvent::Error(ProtocolError::new(ErrorKind::Internal, message))
                    }
                },
                // Not a failure of the node's (which may have charged): a refusal, which charged nothing.
                GenerateEvent::Error(e) if e.kind != ErrorKind::Internal => {
                    end_was = End::Uncharged;
                    GenerateEvent::Error(e)
                }
                event => event,
            };
            let end = !matches!(event, GenerateEvent::Text(_));
            // A caller that went away, or keeps the receiver but reads nothing for our patience, stops the relay.
            if self.gone.is_none()
                && !matches!(tokio::time::timeout(self.patience, self.tx.send(event)).await, Ok(Ok(())))
            {
                self.stop();
            }
            if end {
                break;
            }
            next = self.next().await;
        }
        if let Some((payer, p)) = &self.paid
            && let Some(consumed) = consumed(&end_was, p.price)
        {
            payer.lost_part(p, consumed);
        }
    }

    /// The node's next event; `None` once it ended the stream or (after we stopped listening) missed its deadline.
    async fn next(&mut self) -> Option<GenerateEvent> {
        if let Some(deadline) = self.gone {
            return tokio::time::timeout_at(deadline, self.events.recv()).await.ok().flatten();
        }
        let silence = Instant::now() + self.patience;
        let limit = self.deadline.map_or(silence, |d| d.min(silence));
        tokio::select! {
            event = tokio::time::timeout_at(limit, self.events.recv()) => match event {
                Ok(event) => event,
                Err(_) => {
                    // The node stalled, or is too slow, while the caller waits: the caller is told, the generation
                    // cancelled, and its end (the receipt of what was produced) still awaited.
                    let message = if limit < silence {
                        format!("node {} did not finish the generation in time", self.peer)
                    } else {
                        format!("node {} sent nothing for {:?}", self.peer, self.patience)
                    };
                    let error = GenerateEvent::Error(ProtocolError::new(ErrorKind::Internal, message));
                    let _ = tokio::time::timeout(self.patience, self.tx.send(error)).await;
                    self.stop();
                    tokio::time::timeout_at(self.gone?, self.events.recv()).await.ok().flatten()
                }
            },
            () = self.tx.closed() => {
                self.stop();
                tokio::time::timeout_at(self.gone?, self.events.recv()).await.ok().flatten()
            }
        }
    }

    /// Stop relaying: cancel the generation and give its end the patience to come.
    fn stop(&mut self) {
        self.gone.get_or_insert_with(|| Instant::now() + self.patience);
        if let Some(cancel) = self.cancel.take() {
            cancel.cancel();
        }
    }

    /// A paid generation's end: its receipt must be for this generation (see
    /// [`receipts::check_generation_receipt`]); what it did not charge is credit again.
    fn check(&self, done: &crate::generate::GenerateDone) -> std::result::Result<(), (String, Option<U256>)> {
        let Some((payer, p)) = &self.paid else { return Ok(()) };
        let check = |we_cancelled| {
            receipts::check_generation_receipt(
                &self.batches,
                payer.domain(),
                p,
                done,
                &self.job,
                self.operator,
                we_cancelled,
            )
        };
        match check(self.gone.is_some()) {
            Ok(charged) => {
                payer.answered_part(p, charged);
                Ok(())
            }
            // Refused for a cancel we did not make alone: the node signed what it charged for what it produced.
            Err(reason) => Err((reason, done.receipt.as_ref().and(check(true).ok()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::{GenerateDone, GeneratePrompt, GenerationPrices};
    use crate::protocol::ModelRef;

    fn job() -> GenerationJob {
        let model = ModelRef { name: "m".into(), version: None, id: None };
        let mut request = GenerateRequest::new(model, GeneratePrompt::Text("hello".into()));
        request.max_tokens = Some(16);
        let prices = GenerationPrices { input_wei: U256::from(10u64), output_wei: U256::from(40u64) };
        GenerationJob { request, prices: vec![(crate::ModelId::of_bytes(b"w"), prices)] }
    }

    /// A relay for an unpaid generation fed by the returned sender, its caller's receiver and the cancel signal.
    fn relay(
        patience: Duration,
    ) -> (Relay, mpsc::Sender<GenerateEvent>, mpsc::Receiver<GenerateEvent>, tokio::sync::oneshot::Receiver<()>) {
        let (node, events) = mpsc::channel(8);
        let (tx, caller) = mpsc::channel(8);
        let (cancel, cancelled) = Cancel::pair();
        let relay = Relay {
            events,
            cancel: Some(cancel),
            tx,
            paid: None,
            batches: Arc::new(receipts::BatchCache::new(4)),
            operator: alloy::primitives::Address::ZERO,
            job: job(),
            peer: PeerId::random(),
            patience,
            deadline: None,
            gone: None,
        };
        (relay, node, caller, cancelled)
    }

    /// `f`, failing the test when it does not finish within 10 s (a broken relay hangs rather than fails).
    async fn in_time<F: std::future::Future>(f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(10), f).await.expect("the relay did not act in time")
    }

    fn done(finish: &str) -> GenerateEvent {
        GenerateEvent::Done(GenerateDone {
            finish: finish.into(),
            prompt_tokens: 1,
            output: vec![],
            seed: 1,
            prompt_ids: vec![],
            model: None,
            receipt: None,
        })
    }

    #[tokio::test]
    async fn a_node_that_stalls_mid_stream_is_given_up_on_and_cancelled() {
        let (relay, node, mut caller, cancelled) = relay(Duration::from_millis(200));
        let task = tokio::spawn(relay.run(GenerateEvent::Text("Hi".into())));
        assert!(matches!(caller.recv().await, Some(GenerateEvent::Text(t)) if t == "Hi"));
        // Nothing more comes: after the patience the caller gets an error, the generation is cancelled.
        match in_time(caller.recv()).await {
            Some(GenerateEvent::Error(e)) => assert!(e.message.contains("sent nothing"), "{}", e.message),
            other => panic!("expected the stall to be reported, got {other:?}"),
        }
        in_time(cancelled).await.expect("the stalled generation was cancelled");
        // Its late end is read (for the receipt) but not passed on; the relay then stops.
        node.send(done("cancelled")).await.unwrap();
        in_time(task).await.unwrap();
        assert!(caller.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_node_that_drips_text_is_given_up_on_at_the_deadline() {
        let (mut relay, node, mut caller, cancelled) = relay(Duration::from_secs(5));
        relay.deadline = Some(Instant::now() + Duration::from_millis(300));
        let task = tokio::spawn(relay.run(GenerateEvent::Text("Hi".into())));
        // A piece every 50 ms, well within the patience, for ever.
        let drip = tokio::spawn(async move {
            while node.send(GenerateEvent::Text(".".into())).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let error = in_time(async {
            loop {
                match caller.recv().await {
                    Some(GenerateEvent::Text(_)) => {}
                    Some(GenerateEvent::Error(e)) => return e,
                    other => panic!("expected the deadline to be reported, got {other:?}"),
                }
            }
        })
        .await;
        assert!(error.message.contains("in time"), "{}", error.message);
        in_time(cancelled).await.expect("the slow generation was cancelled");
        // It never ends: the relay waits its patience for the end, then stops.
        in_time(task).await.unwrap();
        drip.abort();
    }

    #[tokio::test]
    async fn a_caller_that_goes_away_cancels_and_the_end_is_still_awaited() {
        let (relay, node, caller, cancelled) = relay(Duration::from_secs(30));
        let task = tokio::spawn(relay.run(GenerateEvent::Text("Hi".into())));
        drop(caller);
        in_time(cancelled).await.expect("the caller's going cancelled the generation");
        assert!(!task.is_finished(), "the relay waits for the end");
        node.send(GenerateEvent::Text("more".into())).await.unwrap();
        node.send(done("cancelled")).await.unwrap();
        in_time(task).await.unwrap();
    }

    #[test]
    fn a_stream_without_a_good_end_counts_its_hold_or_what_its_receipt_signed() {
        let hold = U256::from(1_000u64);
        assert_eq!(consumed(&End::Checked, hold), None, "a good end already told the payer");
        assert_eq!(consumed(&End::Missing, hold), Some(hold));
        assert_eq!(
            consumed(&End::Uncharged, hold),
            Some(U256::ZERO),
            "a node that stopped and says so charged nothing"
        );
        assert_eq!(consumed(&End::BadReceipt(None), hold), Some(hold));
        let truncated = U256::from(300u64);
        assert_eq!(consumed(&End::BadReceipt(Some(truncated)), hold), Some(truncated));
    }
}
