//! A decoder's tokenizer (its `tokenizer.json`, byte-level BPE), its chat template, and streaming detokenization.

use std::path::Path;

use serde::Serialize;
use tokenizers::Tokenizer;

use crate::inference::config::TokenizerConfig;
use crate::{Error, Result};

/// One chat message, as `/v1/chat/completions` takes it.
#[derive(Clone, Debug, Serialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// Its text.
    pub content: String,
}

/// Tokenizer and chat template of a text-generation model.
pub struct ChatTokenizer {
    key: String,
    tokenizer: Tokenizer,
    template: String,
    jinja: minijinja::Environment<'static>,
}

impl std::fmt::Debug for ChatTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatTokenizer")
    }
}

impl ChatTokenizer {
    /// Load `tokenizer.json` from `dir`, verifying its sha256 against the config, and compile the chat template.
    pub fn load(dir: &Path, config: &TokenizerConfig, chat_template: &str, key: &str) -> Result<Self> {
        let fail = |reason: String| Error::Tokenizer { model: key.to_owned(), reason };
        if config.kind != "bpe-json" {
            return Err(fail(format!("tokenizer kind '{}' is not a tokenizer.json (bpe-json)", config.kind)));
        }
        let path = config.verified_path(dir, key)?;
        let tokenizer = Tokenizer::from_file(&path).map_err(|e| fail(e.to_string()))?;
        let jinja = minijinja::Environment::new();
        jinja.template_from_str(chat_template).map_err(|e| fail(format!("the chat template does not compile: {e}")))?;
        Ok(Self { key: key.to_owned(), tokenizer, template: chat_template.to_owned(), jinja })
    }

    /// Token ids of `text` (special tokens written in it, such as `<|im_start|>`, are recognised; nothing is added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| Error::Tokenizer { model: self.key.clone(), reason: e.to_string() })?;
        Ok(enc.get_ids().to_vec())
    }

    /// The prompt text of a conversation, with the turn for the assistant's answer opened.
    pub fn chat_prompt(&self, messages: &[Message]) -> Result<String> {
        self.jinja
            .render_str(&self.template, minijinja::context! { messages => messages, add_generation_prompt => true })
            .map_err(|e| Error::BadRequest(format!("the chat template cannot render these messages: {e}")))
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, true).unwrap_or_default()
    }

    /// Vocabulary size (ids at or beyond it are invalid).
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }
}

/// Turns a growing list of token ids into text pieces as they become complete characters (a character can span
/// tokens in byte-level BPE): the usual two-offset scheme, decoding only a short window each time.
#[derive(Debug, Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    prefix: usize,
    read: usize,
}

impl Detokenizer {
    /// Add a token; returns the new text it completes (often empty for a partial character or a special token).
    pub fn push(&mut self, tok: &ChatTokenizer, id: u32) -> String {
        self.ids.push(id);
        let before = tok.decode(&self.ids[self.prefix..self.read]);
        let now = tok.decode(&self.ids[self.prefix..]);
        if now.len() > before.len() && !now.ends_with('\u{FFFD}') && now.is_char_boundary(before.len()) {
            self.prefix = self.read;
            self.read = self.ids.len();
            now[before.len()..].to_owned()
        } else {
            String::new()
        }
    }

    /// The text still held at the end (an incomplete character comes out as U+FFFD, as a whole decode gives it).
    pub fn finish(&mut self, tok: &ChatTokenizer) -> String {
        let before = tok.decode(&self.ids[self.prefix..self.read]);
        let now = tok.decode(&self.ids[self.prefix..]);
        self.prefix = self.ids.len();
        self.read = self.ids.len();
        match now.get(before.len()..) {
            Some(rest) if now.starts_with(&before) => rest.to_owned(),
            _ => String::new(),
        }
    }
}

/// Holds back text that might be the start of a stop string, and finds the stop strings.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    /// Matching `stops` (empty strings ignored).
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), held: String::new() }
    }

    /// Feed new text; returns the text safe to emit and whether a stop string was reached (the text before it is
    /// returned, the stop string and anything after are dropped).
    pub fn feed(&mut self, text: &str) -> (String, bool) {
        self.held.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s.as_str())).min() {
            let out = self.held[..at].to_owned();
            self.held.clear();
            return (out, true);
        }
        // Keep the longest tail that is a prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .flat_map(|s| (1..s.len()).rev().filter(|&n| s.is_char_boundary(n)).map(move |n| &s[..n]))
            .filter(|p| self.held.ends_with(p))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_owned();
        self.held.drain(..cut);
        (out, false)
    }

    /// What is still held back, at the end of the generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_strings_are_held_back_and_cut() {
        let mut m = StopMatcher::new(vec!["\n\n".into(), "END".into()]);
        assert_eq!(m.feed("Hello"), ("Hello".into(), false));
        assert_eq!(m.feed(" wor\n"), (" wor".into(), false));
        assert_eq!(m.feed("x E"), ("\nx ".into(), false));
        assert_eq!(m.feed("NDING"), (String::new(), true));
        let mut m = StopMatcher::new(vec!["stop".into()]);
        assert_eq!(m.feed("a st"), ("a ".into(), false));
        assert_eq!(m.finish(), "st");
        let mut none = StopMatcher::new(vec![String::new()]);
        assert_eq!(none.feed("abc"), ("abc".into(), false));
    }
}
