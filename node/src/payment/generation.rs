//! Charging a text generation per token (DESIGN.md §3, §8), the same way over libp2p and HTTP.
//!
//! Before the generation is queued, the front end authorizes its most cost — every prompt token and `max_tokens`
//! output tokens at the model's per-token prices — so a voucher or the credit paid ahead must cover the whole of it.
//! [`meter`] then stands between the scheduler and the front end: it passes the tokens on as they come, counts them,
//! and at the end charges what was produced and releases the rest of the hold:
//!
//! - the generation ended (a stop, `max_tokens`): charged for the prompt and every output token; the receipt comes
//!   with the end ([`Metered::Done`]);
//! - the client cancelled (closed its side of a stream; the end, with the receipt, still comes) or went away (a
//!   dropped connection, a whole HTTP answer included): the scheduler ends the sequence at its next step, and it is
//!   charged for the prompt and the tokens produced up to then (finish `cancelled`) — a prefill under way makes one,
//!   so a prompt whose work began is paid for — nothing when it was cancelled before it ran; the receipt is kept for
//!   validators like any other (an end that does not come within 30 s of the cancel is settled on the tokens
//!   counted here);
//! - the node cut it itself ([`Forfeit::claim`]: it is shutting down, or a whole HTTP answer could not be cut within
//!   the request timeout): nothing is charged, and the end is [`Error::Interrupted`] (the client is told to retry)
//!   unless its charge had already begun, in which case its end and receipt come as usual;
//! - the generation failed: nothing is charged.
//!
//! The receipt's units are prompt plus output tokens, its price what they cost, its input hash commits to the
//! prompt tokens and every decoding parameter with the seed, its output hash to the output tokens and how the
//! generation ended ([`mlbridge_sdk::generate::GenerationAudit`], kept in the audit record for validators).

use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use mlbridge_sdk::generate::{GenerationAudit, GenerationParams, GenerationPrices};
use mlbridge_sdk::protocol::ReceiptMsg;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Authorization, Completed, JobInput, PaymentService};
use crate::Error;
use crate::generate::{Completion, Event, FinishReason, GenerateRequest, Generator, Sampling};

/// What a front end sends on: the scheduler's tokens, then the end with the receipt of a paid generation.
#[derive(Debug)]
pub enum Metered {
    /// One output token and the text it completes (possibly empty).
    Token {
        /// Token id.
        id: u32,
        /// Its text.
        text: String,
    },
    /// The end, with the receipt when the generation was paid.
    Done(Completion, Option<Box<ReceiptMsg>>),
    /// The generation, or charging it, failed (nothing was charged).
    Failed(Error),
}

/// A paid generation's hold.
#[derive(Debug)]
pub struct Charge {
    /// The payment service.
    pub service: Arc<PaymentService>,
    /// The hold on the most cost.
    pub auth: Authorization,
    /// The model's per-token prices.
    pub prices: GenerationPrices,
}

/// Finish reason of a generation its client cancelled.
pub const CANCELLED: &str = "cancelled";

/// A metered generation: its events, and the handle that cancels it while its end (with the receipt of what was
/// produced) still comes on `events`.
#[derive(Debug)]
pub struct Metering {
    /// Tokens, then the end.
    pub events: mpsc::Receiver<Metered>,
    /// Cancels the generation at the scheduler's next step; the end then says `cancelled`.
    pub cancel: CancellationToken,
    /// Gives up its charge when the node cuts it itself.
    pub forfeit: Forfeit,
}

/// Whether a metered generation's end is charged, or given up because the node cut it (one or the other, never
/// both: whichever comes first).
#[derive(Clone, Debug, Default)]
pub struct Forfeit(Arc<(AtomicU8, OnceLock<&'static str>)>);

const OPEN: u8 = 0;
const CHARGING: u8 = 1;
const FORFEITED: u8 = 2;

impl Forfeit {
    /// The node gives up charging this generation (`why`: what made it cut it). `true` if nothing will be charged
    /// (its end is then [`Metered::Failed`] with [`Error::Interrupted`]); `false` if its charge already began (the
    /// end and its receipt come as usual, within moments).
    pub fn claim(&self, why: &'static str) -> bool {
        let _ = self.0.1.set(why);
        match self.0.0.compare_exchange(OPEN, FORFEITED, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => true,
            Err(state) => state == FORFEITED,
        }
    }

    /// Begin charging: `false` if the node already gave it up.
    fn charge(&self) -> bool {
        self.0.0.compare_exchange(OPEN, CHARGING, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    fn interrupted(&self) -> Error {
        Error::Interrupted(self.0.1.get().copied().unwrap_or("it gave it up").to_owned())
    }
}

/// The parameters a generation's receipt commits to.
pub fn params(req: &GenerateRequest) -> GenerationParams {
    GenerationParams {
        max_tokens: u32::try_from(req.max_tokens).unwrap_or(u32::MAX),
        temperature: req.sampling.temperature,
        top_k: req.sampling.top_k,
        top_p: req.sampling.top_p,
        seed: req.sampling.seed,
        stop: req.stop.clone(),
    }
}

/// Submit `req` to `generator` and meter it (see the module docs). Cancelling, or dropping the events' receiver,
/// cancels the generation at the scheduler's next step; a paid one is then charged for what it produced.
pub fn meter(generator: &Arc<Generator>, req: GenerateRequest, charge: Option<Charge>) -> crate::Result<Metering> {
    let params = params(&req);
    let prompt = req.prompt.clone();
    let capacity = req.max_tokens + 2;
    let cancel = CancellationToken::new();
    let started = Arc::new(AtomicBool::new(false));
    let events = match generator.submit_watched(req, cancel.clone(), started.clone()) {
        Ok(events) => events,
        Err(e) => {
            if let Some(c) = &charge {
                c.service.release(&c.auth);
            }
            return Err(e);
        }
    };
    let (tx, rx) = mpsc::channel(capacity);
    let forfeit = Forfeit::default();
    let job =
        Job { generator: generator.clone(), prompt, params, cancel: cancel.clone(), started, forfeit: forfeit.clone() };
    tokio::spawn(run(job, events, tx, charge));
    Ok(Metering { events: rx, cancel, forfeit })
}

struct Job {
    generator: Arc<Generator>,
    prompt: Vec<u32>,
    params: GenerationParams,
    cancel: CancellationToken,
    /// Set by the scheduler when the prefill began.
    started: Arc<AtomicBool>,
    forfeit: Forfeit,
}

/// How long a cancelled generation's end may take to come from the scheduler (its next step) before the hold is
/// settled on the tokens counted here: a wedged scheduler must not hold a client's payment for ever.
const END_GRACE: Duration = Duration::from_secs(30);

async fn run(job: Job, mut events: mpsc::Receiver<Event>, tx: mpsc::Sender<Metered>, charge: Option<Charge>) {
    let Job { generator, prompt, params, cancel, started, forfeit } = job;
    // Whether the front end still takes events; once it went away the generation is cancelled and its end (the
    // scheduler's count of what it produced) still awaited, so a prompt whose prefill began is charged.
    let mut reading = true;
    let mut output = Vec::new();
    let late = async {
        cancel.cancelled().await;
        tokio::time::sleep(END_GRACE).await;
    };
    tokio::pin!(late);
    let end = loop {
        let event = tokio::select! {
            biased;
            event = events.recv() => event,
            () = tx.closed(), if reading => {
                reading = false;
                cancel.cancel();
                continue;
            }
            () = &mut late => {
                tracing::warn!(target: "node::payment", "a cancelled generation's end did not come; charged as counted");
                break Some(Completion {
                    finish: FinishReason::Cancelled,
                    prompt_tokens: prompt.len(),
                    output,
                    sampling: Sampling {
                        temperature: params.temperature,
                        top_k: params.top_k,
                        top_p: params.top_p,
                        seed: params.seed,
                    },
                });
            }
        };
        match event {
            Some(Event::Token { id, text }) => {
                output.push(id);
                // The channel holds every event the generation can send: this never waits on the front end.
                if reading && tx.send(Metered::Token { id, text }).await.is_err() {
                    reading = false;
                    cancel.cancel();
                }
            }
            Some(Event::Done(c)) => break Some(c),
            None => break None,
        }
    };
    // Cancels a generation still running (one whose end came late).
    drop(events);
    // Failed, or cut by the node itself: nothing charged.
    let failed = match end {
        None => Some(stopped()),
        Some(_) if !forfeit.charge() => Some(forfeit.interrupted()),
        Some(_) => None,
    };
    let completion = match (end, failed) {
        (Some(completion), None) => completion,
        (_, failed) => {
            if let Some(charge) = &charge {
                charge.service.release(&charge.auth);
            }
            let _ = tx.send(Metered::Failed(failed.unwrap_or_else(stopped))).await;
            return;
        }
    };
    let Some(charge) = charge else {
        let _ = tx.send(Metered::Done(completion, None)).await;
        return;
    };
    // Cancelled before its prefill began: nothing charged. (Once it began, the prompt is charged even when the end
    // came from the grace timer above with nothing counted.)
    if completion.finish == FinishReason::Cancelled && completion.output.is_empty() && !started.load(Ordering::Acquire)
    {
        charge.service.release(&charge.auth);
        let _ = tx.send(Metered::Done(completion, None)).await;
        return;
    }
    let finish = completion.finish.as_str().to_owned();
    let audit = GenerationAudit { prompt, params, output: completion.output.clone(), finish };
    match complete(&generator, charge, audit).await {
        Ok(receipt) => {
            let _ = tx.send(Metered::Done(completion, Some(Box::new(receipt)))).await;
        }
        Err(e) => {
            tracing::error!(target: "node::payment", err = %e, "charging a generation failed; it is not charged");
            let _ = tx.send(Metered::Failed(e)).await;
        }
    }
}

fn stopped() -> Error {
    Error::Inference { model: "generation".into(), reason: "the generation stopped; the node's log says why".into() }
}

/// Charge the tokens of `audit` (at most the hold; the rest is released) and have its receipt signed.
async fn complete(generator: &Generator, charge: Charge, audit: GenerationAudit) -> crate::Result<ReceiptMsg> {
    let Charge { service, mut auth, prices } = charge;
    let (prompt, output) = (audit.prompt.len() as u64, audit.output.len() as u64);
    let cost = prices.cost(prompt, output);
    if cost > auth.price {
        // Cannot happen (the hold is the most cost); charge no more than was authorized.
        tracing::error!(target: "node::payment", %cost, held = %auth.price, "a generation cost more than its hold");
    }
    service.settle_part(&mut auth, prompt + output, cost);
    let done = Completed { config: generator.config(), input: JobInput::Generation(Box::new(audit)), outputs: &[] };
    service.complete(&auth, done).await
}

/// The version a node that charges sells for `name`: the one asked for when validators can check it (or it is
/// free), else the newest such; a node serves versions validators cannot check free only (see `[generation]
/// verifiable`). A name or version the node does not have is passed on for the lookup to refuse.
pub fn sold_version(engine: &crate::inference::Engine, name: &str, asked: Option<u64>) -> crate::Result<Option<u64>> {
    let sellable = |c: &crate::inference::ModelConfig| c.generation.as_ref().is_some_and(|g| g.sold_to_payers());
    // By version, oldest first.
    let versions: Vec<_> = engine.generation_configs().filter(|c| c.name == name).collect();
    // A paying caller that names no version gets the newest version validators can check (it charges); only a model
    // with none gets its newest free one.
    let verifiable = |c: &&&crate::inference::ModelConfig| c.generation.as_ref().is_some_and(|g| g.verifiable);
    let newest = versions
        .iter()
        .rev()
        .find(verifiable)
        .or_else(|| versions.iter().rev().find(|c| sellable(c)))
        .map(|c| c.version);
    let refused = |what: String| {
        Err(Error::BadRequest(match newest {
            Some(ok) => format!(
                "{what} is served free only (validators cannot check its generations); paid generations use version {ok}"
            ),
            None => format!("{what} is served free only: validators cannot check its generations"),
        }))
    };
    match asked {
        _ if versions.is_empty() => Ok(asked),
        None => match newest {
            Some(v) => Ok(Some(v)),
            None => refused(name.to_owned()),
        },
        Some(v) => match versions.iter().find(|c| c.version == v) {
            Some(c) if !sellable(c) => refused(format!("{name}:{v}")),
            _ => Ok(Some(v)),
        },
    }
}
