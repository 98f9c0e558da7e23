//! Charging a text generation per token (DESIGN.md §3, §8), the same way over libp2p and HTTP.
//!
//! Before the generation is queued, the front end authorizes its most cost — every prompt token and `max_tokens`
//! output tokens at the model's per-token prices — so a voucher or the credit paid ahead must cover the whole of it.
//! [`meter`] then stands between the scheduler and the front end: it passes the tokens on as they come, counts them,
//! and at the end charges what was produced and releases the rest of the hold:
//!
//! - the generation ended (a stop, `max_tokens`): charged for the prompt and every output token; the receipt comes
//!   with the end ([`Metered::Done`]);
//! - the client went away (a closed stream or connection): charged for the prompt and the tokens produced up to then
//!   (finish `cancelled`), or nothing when none was; the receipt is kept for validators like any other;
//! - the generation failed: nothing is charged.
//!
//! The receipt's units are prompt plus output tokens, its price what they cost, its input hash commits to the
//! prompt tokens and every decoding parameter with the seed, its output hash to the output tokens and how the
//! generation ended ([`mlbridge_sdk::generate::GenerationAudit`], kept in the audit record for validators).

use std::sync::Arc;

use alloy::primitives::U256;
use mlbridge_sdk::generate::{GenerationAudit, GenerationParams, GenerationPrices};
use mlbridge_sdk::protocol::ReceiptMsg;
use tokio::sync::mpsc;

use super::{Authorization, Completed, JobInput, PaymentService};
use crate::Error;
use crate::generate::{Completion, Event, GenerateRequest, Generator};

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

/// Submit `req` to `generator` and meter it (see the module docs). Dropping the returned receiver cancels the
/// generation at the scheduler's next step; a paid one is then charged for what it produced.
pub fn meter(
    generator: &Arc<Generator>,
    req: GenerateRequest,
    charge: Option<Charge>,
) -> crate::Result<mpsc::Receiver<Metered>> {
    let params = params(&req);
    let prompt = req.prompt.clone();
    let capacity = req.max_tokens + 2;
    let events = match generator.submit(req) {
        Ok(events) => events,
        Err(e) => {
            if let Some(c) = &charge {
                c.service.release(&c.auth);
            }
            return Err(e);
        }
    };
    let (tx, rx) = mpsc::channel(capacity);
    let generator = generator.clone();
    tokio::spawn(run(generator, events, tx, charge, prompt, params));
    Ok(rx)
}

enum End {
    Done(Completion),
    Cancelled,
    Failed,
}

async fn run(
    generator: Arc<Generator>,
    mut events: mpsc::Receiver<Event>,
    tx: mpsc::Sender<Metered>,
    charge: Option<Charge>,
    prompt: Vec<u32>,
    params: GenerationParams,
) {
    let mut output = Vec::new();
    let end = loop {
        let event = tokio::select! {
            biased;
            event = events.recv() => event,
            () = tx.closed() => break End::Cancelled,
        };
        match event {
            Some(Event::Token { id, text }) => {
                output.push(id);
                if tx.send(Metered::Token { id, text }).await.is_err() {
                    break End::Cancelled;
                }
            }
            Some(Event::Done(c)) => break End::Done(c),
            None => break End::Failed,
        }
    };
    // Cancels a generation still running.
    drop(events);
    let Some(charge) = charge else {
        let _ = tx.send(end_message(end, None)).await;
        return;
    };
    let (output, finish) = match &end {
        End::Done(c) => (c.output.clone(), c.finish.as_str()),
        End::Cancelled if !output.is_empty() => (output, CANCELLED),
        End::Cancelled | End::Failed => {
            charge.service.release(&charge.auth);
            let _ = tx.send(end_message(end, None)).await;
            return;
        }
    };
    let audit = GenerationAudit { prompt, params, output, finish: finish.to_owned() };
    match complete(&generator, charge, audit).await {
        Ok(receipt) => {
            let _ = tx.send(end_message(end, Some(Box::new(receipt)))).await;
        }
        Err(e) => {
            tracing::error!(target: "node::payment", err = %e, "charging a generation failed; it is not charged");
            let _ = tx.send(Metered::Failed(e)).await;
        }
    }
}

fn end_message(end: End, receipt: Option<Box<ReceiptMsg>>) -> Metered {
    match end {
        End::Done(c) => Metered::Done(c, receipt),
        End::Cancelled | End::Failed => Metered::Failed(Error::Inference {
            model: "generation".into(),
            reason: "the generation stopped; the node's log says why".into(),
        }),
    }
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

/// The hold for a generation of `prompt` tokens and at most `max_tokens` more at `prices`.
pub fn hold(prices: &GenerationPrices, prompt: usize, max_tokens: usize) -> U256 {
    prices.most(prompt as u64, max_tokens as u64)
}

/// The version a node that charges sells for `name`: the one asked for when validators can check it, else the
/// newest they can check (a node serves unverifiable versions free only; see `[generation] verifiable`).
pub fn sold_version(engine: &crate::inference::Engine, name: &str, asked: Option<u64>) -> crate::Result<Option<u64>> {
    let verifiable = engine.verifiable_generation_version(name);
    let Some(v) = asked else { return Ok(verifiable.or(asked)) };
    let checkable = engine.generation_configs().any(|c| {
        c.name == name && c.version == v && c.generation.as_ref().is_none_or(|g| g.verifiable || g.prices().is_free())
    });
    if checkable {
        return Ok(Some(v));
    }
    Err(Error::BadRequest(match verifiable {
        Some(ok) => format!(
            "{name}:{v} is served free only (validators cannot check its generations); paid generations use \
             version {ok}"
        ),
        None => format!("{name}:{v} is served free only (validators cannot check its generations)"),
    }))
}
