//! The generation scheduler: continuous (iteration-level) batching on one thread per model.
//!
//! Requests wait in a bounded queue. Between decoding steps the scheduler admits the oldest waiting requests while a
//! sequence slot is free and the KV budget holds their prompt plus `max_tokens` (reserved whole at admission, so a
//! running sequence never runs out of memory), prefills the admitted prompts together, then runs one decoding step
//! for every running sequence. Sequences leave as soon as they finish (a stop token, a stop string, `max_tokens`),
//! are cancelled (their [`CancellationToken`]: the end, finish `cancelled`, still comes with every token produced,
//! the one a prefill under way makes included) or their client goes away (its event receiver dropped), and their
//! memory goes to the next in line. A full queue is refused at once ([`Error::GenerationFull`], a 503 with
//! Retry-After over HTTP).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::decoder::{Decoder, KvCache, Logits, Row, decode_groups};
use super::sampling::{Sampler, Sampling};
use super::tokenizer::{ChatTokenizer, Detokenizer, StopMatcher};
use crate::inference::config::{GenerationConfig, ModelConfig};
use crate::metrics::NodeMetrics;
use crate::{Error, Result};

/// Padded prompt tokens (rows x longest prompt) one prefill call may hold: bounds its activation memory.
const PREFILL_TOKENS: usize = 4096;

/// Bytes of prompt text per token of context accepted before tokenizing (a token is a few bytes; this only keeps a
/// hostile request from costing a long tokenization before the context check refuses it).
const BYTES_PER_CONTEXT_TOKEN: usize = 32;

/// Most stop strings a request may give (OpenAI's limit), and their longest.
pub const MAX_STOPS: usize = 4;
/// Longest stop string, bytes.
pub const MAX_STOP_BYTES: usize = 256;

/// A prompt as a front end receives it.
#[derive(Clone, Debug)]
pub enum Prompt {
    /// Text, continued as written.
    Text(String),
    /// A conversation, rendered with the model's chat template.
    Chat(Vec<super::tokenizer::Message>),
    /// Token ids.
    Ids(Vec<u32>),
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateRequest {
    /// Prompt token ids (chat template already applied).
    pub prompt: Vec<u32>,
    /// Most output tokens.
    pub max_tokens: usize,
    /// Decoding rule.
    pub sampling: Sampling,
    /// Strings that end the output (not included in it).
    pub stop: Vec<String>,
}

/// Why a generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or stop string.
    Stop,
    /// `max_tokens` reached.
    Length,
    /// The client cancelled it (closed its side of the stream); what was produced until then is the output.
    Cancelled,
}

impl FinishReason {
    /// OpenAI's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A finished generation.
#[derive(Clone, Debug)]
pub struct Completion {
    /// Why it ended.
    pub finish: FinishReason,
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Output token ids, the stop token included when one ended it.
    pub output: Vec<u32>,
    /// The sampling parameters, seed included.
    pub sampling: Sampling,
}

/// What a generation sends as it goes.
#[derive(Clone, Debug)]
pub enum Event {
    /// One output token, with the text it completes (complete characters; text that may begin a stop string is held
    /// back, so it can be empty). Every token comes as one event, so a consumer knows what was produced (and what
    /// a cancelled paid stream costs).
    Token {
        /// The token id.
        id: u32,
        /// Its text.
        text: String,
    },
    /// The end.
    Done(Completion),
}

struct Waiting {
    req: GenerateRequest,
    events: mpsc::Sender<Event>,
    cancel: CancellationToken,
    /// Set when its prefill begins.
    started: Arc<AtomicBool>,
    since: Instant,
}

impl Waiting {
    /// Whether it still waits: one whose client went is dropped, one cancelled before it ran ends with nothing
    /// produced.
    fn stays(&self) -> bool {
        if self.cancel.is_cancelled() {
            let _ = self.events.try_send(Event::Done(Completion {
                finish: FinishReason::Cancelled,
                prompt_tokens: self.req.prompt.len(),
                output: Vec::new(),
                sampling: self.req.sampling,
            }));
            return false;
        }
        !self.events.is_closed()
    }
}

struct Running {
    req: GenerateRequest,
    events: mpsc::Sender<Event>,
    cancel: CancellationToken,
    started: Arc<AtomicBool>,
    cache: KvCache,
    output: Vec<u32>,
    sampler: Sampler,
    detok: Detokenizer,
    stops: StopMatcher,
    reserved: usize,
    since: Instant,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiting>,
    shutdown: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A text-generation model being served.
pub struct Generator {
    shared: Arc<Shared>,
    decoder: Arc<Decoder>,
    tokenizer: Arc<ChatTokenizer>,
    config: ModelConfig,
    queue_capacity: usize,
    /// Token ids of recent prompts (after the chat template), by their text: repeated prompts and system prompts
    /// are not tokenized again. Bounded by bytes ([`PROMPT_CACHE_BYTES`]).
    prompts: moka::sync::Cache<Arc<str>, Arc<Vec<u32>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Memory for cached prompt tokenizations (text and ids together, approximately).
const PROMPT_CACHE_BYTES: u64 = 16 << 20;

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator").field("model", &self.config.key()).finish_non_exhaustive()
    }
}

impl Generator {
    /// Start the scheduler thread of `config`'s model.
    pub fn start(
        decoder: Decoder,
        tokenizer: Arc<ChatTokenizer>,
        config: ModelConfig,
        queue_capacity: usize,
        metrics: NodeMetrics,
    ) -> Result<Self> {
        let generation = config.generation.clone().ok_or_else(|| Error::NotTextModel { model: config.key() })?;
        let shared = Arc::new(Shared { queue: Mutex::default(), wake: Condvar::new() });
        let decoder = Arc::new(decoder);
        let mut sched = Scheduler {
            shared: shared.clone(),
            decoder: decoder.clone(),
            tokenizer: tokenizer.clone(),
            generation,
            max_sequences: config.max_batch_size,
            key: config.key(),
            metrics,
            running: Vec::new(),
            used: 0,
            logits: Logits::default(),
        };
        let thread =
            std::thread::Builder::new().name(format!("generate-{}", config.name)).spawn(move || sched.run()).map_err(
                |e| Error::LoadFailed { model: config.key(), reason: format!("cannot start its thread: {e}") },
            )?;
        let prompts = moka::sync::Cache::builder()
            .max_capacity(PROMPT_CACHE_BYTES)
            .weigher(|text: &Arc<str>, ids: &Arc<Vec<u32>>| (text.len() + 4 * ids.len() + 64) as u32)
            .build();
        Ok(Self { shared, decoder, tokenizer, config, queue_capacity, prompts, thread: Some(thread) })
    }

    /// The model's config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Its `[generation]` settings.
    pub fn generation(&self) -> &GenerationConfig {
        self.config.generation.as_ref().expect("a generator's config has [generation]")
    }

    /// Its tokenizer and chat template.
    pub fn tokenizer(&self) -> &ChatTokenizer {
        &self.tokenizer
    }

    /// The decoder (for teacher-forced checks).
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// Check a request against the model's limits; the output budget is `max_tokens` or the default.
    pub fn check(&self, prompt: &[u32], max_tokens: Option<usize>, sampling: &Sampling) -> Result<usize> {
        let g = self.generation();
        sampling.check()?;
        if prompt.is_empty() {
            return Err(Error::EmptyInput);
        }
        let vocab = self.decoder.shape().vocab;
        if let Some(bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::BadRequest(format!("token id {bad} is outside the vocabulary of {vocab}")));
        }
        let room = g.max_context.saturating_sub(prompt.len());
        if room == 0 {
            return Err(Error::BadRequest(format!(
                "the prompt ({} tokens) fills the model's context of {} tokens; shorten it",
                prompt.len(),
                g.max_context
            )));
        }
        let max_tokens = max_tokens.unwrap_or(g.default_max_tokens.min(room));
        if max_tokens == 0 {
            return Err(Error::BadRequest("max_tokens must be at least 1".into()));
        }
        // (Compared without adding: a max_tokens near usize::MAX must not wrap around.)
        if max_tokens > room {
            return Err(Error::BadRequest(format!(
                "the prompt ({} tokens) plus max_tokens ({max_tokens}) exceeds the model's context of {} tokens; \
                 shorten the prompt or ask for fewer tokens",
                prompt.len(),
                g.max_context
            )));
        }
        Ok(max_tokens)
    }

    /// The token ids of a prompt: the chat template applied, tokenized on a blocking thread, after a size check.
    pub async fn prompt_tokens(self: &Arc<Self>, prompt: Prompt) -> Result<Vec<u32>> {
        let limit = self.generation().max_context.saturating_mul(BYTES_PER_CONTEXT_TOKEN);
        let bytes = match &prompt {
            Prompt::Text(t) => t.len(),
            // Every message costs template text too (an empty one still renders ~16 bytes and a few tokens).
            Prompt::Chat(messages) if messages.len() > self.generation().max_context => {
                return Err(Error::BadRequest(format!(
                    "{} messages cannot fit the model's context of {} tokens",
                    messages.len(),
                    self.generation().max_context
                )));
            }
            Prompt::Chat(messages) => messages.iter().map(|m| m.content.len() + m.role.len() + 16).sum(),
            Prompt::Ids(ids) => return Ok(ids.clone()),
        };
        if bytes > limit {
            return Err(Error::BadRequest(format!(
                "the prompt has {bytes} bytes, more than the model's context can hold ({limit} bytes at most)"
            )));
        }
        let g = self.clone();
        tokio::task::spawn_blocking(move || match prompt {
            Prompt::Text(t) => g.encode_cached(t),
            Prompt::Chat(messages) => g.encode_cached(g.tokenizer.chat_prompt(&messages)?),
            Prompt::Ids(ids) => Ok(ids),
        })
        .await
        .map_err(|e| Error::Inference { model: self.config.key(), reason: format!("tokenizing the prompt: {e}") })?
    }

    /// How many prompt tokenizations are cached (each tokenized prompt text once).
    pub fn cached_prompts(&self) -> u64 {
        self.prompts.run_pending_tasks();
        self.prompts.entry_count()
    }

    /// `text`'s token ids, from the prompt cache or the tokenizer (blocking).
    fn encode_cached(&self, text: String) -> Result<Vec<u32>> {
        let text: Arc<str> = text.into();
        if let Some(ids) = self.prompts.get(&text) {
            return Ok(ids.as_ref().clone());
        }
        let ids = self.tokenizer.encode(&text)?;
        self.prompts.insert(text, Arc::new(ids.clone()));
        Ok(ids)
    }

    /// Check stop strings against the limits.
    pub fn check_stops(stop: &[String]) -> Result<()> {
        if stop.len() > MAX_STOPS || stop.iter().any(|s| s.len() > MAX_STOP_BYTES) {
            return Err(Error::BadRequest(format!(
                "stop takes at most {MAX_STOPS} strings of at most {MAX_STOP_BYTES} bytes"
            )));
        }
        Ok(())
    }

    /// Queue a generation; its events arrive on the returned receiver. Dropping the receiver cancels it.
    pub fn submit(&self, req: GenerateRequest) -> Result<mpsc::Receiver<Event>> {
        self.submit_cancellable(req, CancellationToken::new())
    }

    /// Queue a generation that `cancel` ends at the scheduler's next step: its end (finish `cancelled`, with what was
    /// produced until then) still comes on the returned receiver. Dropping the receiver cancels it with no end.
    pub fn submit_cancellable(&self, req: GenerateRequest, cancel: CancellationToken) -> Result<mpsc::Receiver<Event>> {
        self.submit_watched(req, cancel, Arc::default())
    }

    /// [`Generator::submit_cancellable`], with `started` set when the sequence's prefill begins (from then on its
    /// prompt has cost work, whatever becomes of its end).
    pub fn submit_watched(
        &self,
        req: GenerateRequest,
        cancel: CancellationToken,
        started: Arc<AtomicBool>,
    ) -> Result<mpsc::Receiver<Event>> {
        self.check(&req.prompt, Some(req.max_tokens), &req.sampling)?;
        Self::check_stops(&req.stop)?;
        // Room for every event the sequence can send (a text piece per token at most, then the end): the scheduler
        // never waits on a slow reader and the memory is bounded by max_tokens.
        let (events, rx) = mpsc::channel(req.max_tokens + 2);
        let mut q = self.shared.lock();
        q.waiting.retain(Waiting::stays);
        if q.waiting.len() >= self.queue_capacity {
            return Err(Error::GenerationFull { model: self.config.key(), waiting: q.waiting.len() });
        }
        q.waiting.push_back(Waiting { req, events, cancel, started, since: Instant::now() });
        drop(q);
        self.shared.wake.notify_one();
        Ok(rx)
    }

    /// Logits after each of `tokens[from..]`'s predecessors: row `i` predicts `tokens[from + i]` from everything
    /// before it. One forward pass over the whole sequence (teacher forcing), outside the scheduler. Blocks.
    pub fn teacher_forced(&self, tokens: &[u32], from: usize) -> Result<Vec<f32>> {
        if from == 0 || from > tokens.len() {
            return Err(Error::BadRequest("teacher forcing needs a prompt of at least one token".into()));
        }
        let mut cache = KvCache::new(self.decoder.shape(), tokens.len());
        let logits_at = (from - 1..tokens.len().saturating_sub(1)).collect();
        let mut rows = [Row { tokens, cache: &mut cache, logits_at }];
        Ok(self.decoder.step(&mut rows)?.pop().unwrap_or_default())
    }
}

impl Drop for Generator {
    fn drop(&mut self) {
        self.shared.lock().shutdown = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Scheduler {
    shared: Arc<Shared>,
    decoder: Arc<Decoder>,
    tokenizer: Arc<ChatTokenizer>,
    generation: GenerationConfig,
    max_sequences: usize,
    key: String,
    metrics: NodeMetrics,
    running: Vec<Running>,
    /// KV tokens reserved by running sequences.
    used: usize,
    /// The logits of the last step (one buffer for the scheduler's life).
    logits: Logits,
}

impl Scheduler {
    fn run(&mut self) {
        loop {
            let Some(admitted) = self.admit() else { return };
            // A bug that panics inside a step must not leave the model's clients waiting forever on a dead thread:
            // the step's sequences end (their clients see the stream stop) and the scheduler goes on.
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let prefilled = self.prefill(admitted);
                self.decode().and(prefilled)
            }));
            // A failed call's sequences have ended (`prefill` and `decode` keep the others); after a panic no cache
            // can be trusted, so every running sequence ends. (`admit` recounts the KV reservations.)
            let failure = match step {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => {
                    self.running.clear();
                    Some("a decoding step panicked".to_owned())
                }
            };
            if let Some(e) = failure {
                tracing::error!(target: "node::generate", model = %self.key, %e, "decoding step failed");
            }
            self.metrics.generation_sequences.with_label_values(&[&self.key]).set(self.running.len() as f64);
        }
    }

    /// Wait for work and take the waiting requests that fit. `None` at shutdown.
    fn admit(&mut self) -> Option<Vec<Waiting>> {
        // A cancelled sequence ends here, between steps, with what it produced.
        self.running.retain_mut(|r| {
            if r.cancel.is_cancelled() {
                r.end(FinishReason::Cancelled);
                return false;
            }
            !r.events.is_closed()
        });
        self.used = self.running.iter().map(|r| r.reserved).sum();
        let mut q = self.shared.lock();
        loop {
            if q.shutdown {
                return None;
            }
            q.waiting.retain(Waiting::stays);
            let mut admitted = Vec::new();
            while let Some(w) = q.waiting.front() {
                let need = w.req.prompt.len() + w.req.max_tokens;
                if self.running.len() + admitted.len() >= self.max_sequences
                    || self.used + need > self.generation.kv_budget_tokens
                {
                    break;
                }
                self.used += need;
                admitted.extend(q.waiting.pop_front());
            }
            if !admitted.is_empty() || !self.running.is_empty() {
                return Some(admitted);
            }
            q = self.shared.wake.wait(q).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn prefill(&mut self, admitted: Vec<Waiting>) -> Result<()> {
        let shape = self.decoder.shape();
        let mut fresh: Vec<Running> = admitted
            .into_iter()
            .map(|w| {
                let wait = w.since.elapsed().as_secs_f64();
                self.metrics.generation_queue_seconds.with_label_values(&[&self.key]).observe(wait);
                let reserved = w.req.prompt.len() + w.req.max_tokens;
                Running {
                    cache: KvCache::new(shape, reserved),
                    output: Vec::new(),
                    sampler: Sampler::new(w.req.sampling),
                    detok: Detokenizer::default(),
                    stops: StopMatcher::new(w.req.stop.clone()),
                    events: w.events,
                    cancel: w.cancel,
                    started: w.started,
                    req: w.req,
                    reserved,
                    since: w.since,
                }
            })
            .collect();
        let mut failed = None;
        loop {
            // One cancelled (or whose client went) before its group's prefill ends with nothing produced: a long
            // prefill of earlier groups does not make its prompt cost work.
            fresh.retain_mut(|r| {
                if r.cancel.is_cancelled() {
                    return !r.end(FinishReason::Cancelled);
                }
                !r.events.is_closed()
            });
            if fresh.is_empty() {
                break;
            }
            // A group whose padded size fits PREFILL_TOKENS (at least one sequence).
            let mut n = 0;
            let mut longest = 0;
            while n < fresh.len() {
                let l = longest.max(fresh[n].req.prompt.len());
                if n > 0 && l * (n + 1) > PREFILL_TOKENS {
                    break;
                }
                longest = l;
                n += 1;
            }
            let mut group: Vec<Running> = fresh.drain(..n).collect();
            for r in &group {
                r.started.store(true, Ordering::Release);
            }
            let logits = {
                let mut rows: Vec<Row<'_>> = group
                    .iter_mut()
                    .map(|r| Row {
                        tokens: &r.req.prompt,
                        cache: &mut r.cache,
                        logits_at: vec![r.req.prompt.len() - 1],
                    })
                    .collect();
                let started = Instant::now();
                let stepped = self.decoder.step_into(&mut rows, &mut self.logits);
                self.observe_step("prefill", started);
                stepped
            };
            // A failed group ends (its clients see the stream stop); the other groups go on.
            if let Err(e) = logits {
                failed.get_or_insert(e);
                continue;
            }
            let mut still = std::mem::take(&mut self.running);
            self.take_tokens(group, &mut still);
            self.running = still;
        }
        failed.map_or(Ok(()), Err)
    }

    /// One token for every running sequence (each feeds the token it sampled last).
    fn decode(&mut self) -> Result<()> {
        // Sequences just prefilled are in `running` with their first token: they take part at once. Rows are padded
        // to the longest past of their call (padded further, see `padded_past`), so sequences go by length in calls
        // whose gathering buffers (each call's group keeps its own in the decoder) hold, all together, about
        // `kv_budget_tokens` padded tokens at most (`decode_groups`): one long sequence among many short ones cannot
        // make a step copy, or hold, many times the KV budget.
        self.running.sort_by_key(|r| r.cache.len());
        let cap = self.generation.kv_budget_tokens.max(self.generation.max_context);
        let lens: Vec<usize> = self.running.iter().map(|r| r.cache.len()).collect();
        let running = std::mem::take(&mut self.running);
        let mut still = Vec::with_capacity(running.len());
        let mut rest = running.into_iter();
        let mut groups = 0;
        for size in decode_groups(&lens, cap) {
            let mut group: Vec<Running> = rest.by_ref().take(size).collect();
            let last: Vec<[u32; 1]> =
                group.iter().map(|r| [*r.output.last().expect("a running sequence has output")]).collect();
            let step = {
                let mut rows: Vec<Row<'_>> = group
                    .iter_mut()
                    .zip(&last)
                    .map(|(r, t)| Row { tokens: t, cache: &mut r.cache, logits_at: vec![0] })
                    .collect();
                let started = Instant::now();
                let stepped = self.decoder.step_group(groups, &mut rows, &mut self.logits);
                self.observe_step("decode", started);
                stepped
            };
            groups += 1;
            if let Err(e) = step {
                // Sequences not in the failed call go on.
                still.extend(rest);
                self.running = still;
                return Err(e);
            }
            self.take_tokens(group, &mut still);
        }
        self.running = still;
        // Nothing left running: no group's buffers are kept while the model idles.
        self.decoder.keep_groups(if self.running.is_empty() { 0 } else { groups });
        Ok(())
    }

    /// Sample each of `group`'s next token from the last step's logits (row `i` is its `i`th); the sequences that go
    /// on join `still`, the others give their KV reservation back.
    fn take_tokens(&mut self, group: Vec<Running>, still: &mut Vec<Running>) {
        for (i, mut r) in group.into_iter().enumerate() {
            let t = r.sampler.pick(self.logits.row(i));
            if self.advance(&mut r, t) {
                self.used -= r.reserved;
            } else {
                still.push(r);
            }
        }
    }

    fn observe_step(&self, phase: &str, started: Instant) {
        let seconds = started.elapsed().as_secs_f64();
        self.metrics.generation_step_seconds.with_label_values(&[&self.key, phase]).observe(seconds);
    }

    /// Take `token` as the sequence's next output; `true` when the sequence is done (finished or its client gone).
    fn advance(&self, r: &mut Running, token: u32) -> bool {
        r.output.push(token);
        self.metrics.generated_tokens.with_label_values(&[&self.key]).inc();
        if r.output.len() == 1 {
            let ttft = r.since.elapsed().as_secs_f64();
            self.metrics.time_to_first_token_seconds.with_label_values(&[&self.key]).observe(ttft);
        }
        let (mut text, finish) = if self.generation.stop_token_ids.contains(&token) {
            (String::new(), Some(FinishReason::Stop))
        } else {
            let piece = r.detok.push(&self.tokenizer, token);
            let (emit, hit) = r.stops.feed(&piece);
            let length = r.output.len() >= r.req.max_tokens;
            (emit, if hit { Some(FinishReason::Stop) } else { length.then_some(FinishReason::Length) })
        };
        // A stop string's text is never sent. At the end, text held back as a possible stop string's start was not
        // one after all, nor is a last incomplete character.
        if finish.is_some_and(|f| f == FinishReason::Length || self.generation.stop_token_ids.contains(&token)) {
            text.push_str(&r.stops.finish());
            text.push_str(&r.detok.finish(&self.tokenizer));
        }
        // The channel holds max_tokens + 2 events: a failed send means the client is gone.
        if r.events.try_send(Event::Token { id: token, text }).is_err() {
            return true;
        }
        // A cancel that came while this token was being made ends the sequence with it.
        match finish.or_else(|| r.cancel.is_cancelled().then_some(FinishReason::Cancelled)) {
            Some(finish) => r.end(finish),
            None => r.events.is_closed(),
        }
    }
}

impl Running {
    /// Send the end; `true` (the sequence is done).
    fn end(&mut self, finish: FinishReason) -> bool {
        let _ = self.events.try_send(Event::Done(Completion {
            finish,
            prompt_tokens: self.req.prompt.len(),
            output: std::mem::take(&mut self.output),
            sampling: self.req.sampling,
        }));
        true
    }
}
