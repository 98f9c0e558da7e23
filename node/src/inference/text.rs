//! Text input for embedding models: BERT WordPiece tokenization from the model's `vocab.txt` (normalisation,
//! lower-casing and accent stripping, `[CLS] ... [SEP]`, truncation), as all-MiniLM-L6-v2 defines it.

use std::path::Path;

use mlbridge_sdk::{Tensor, TensorData};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{Tokenizer, TruncationParams};

use super::config::TokenizerConfig;
use crate::{Error, Result};

/// Turns texts (or token ids a client tokenized itself) into `input_ids` / `attention_mask` tensors.
pub struct TextEncoder {
    tokenizer: Tokenizer,
    /// Longest sequence, special tokens included (texts are truncated to it; token ids beyond it are refused).
    max_length: usize,
}

impl std::fmt::Debug for TextEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TextEncoder")
    }
}

impl TextEncoder {
    /// Load the tokenizer of model `key` from `dir`, verifying the vocabulary's sha256 against the config.
    pub fn load(dir: &Path, config: &TokenizerConfig, key: &str) -> Result<Self> {
        let fail = |reason: String| Error::Tokenizer { model: key.to_owned(), reason };
        if config.kind != "wordpiece" {
            return Err(fail(format!("tokenizer kind '{}' is not supported (only wordpiece)", config.kind)));
        }
        let path = config.verified_path(dir, key)?;
        let vocab = path.to_str().ok_or_else(|| fail("vocabulary path is not UTF-8".into()))?;
        let wordpiece =
            WordPiece::from_file(vocab).unk_token("[UNK]".into()).build().map_err(|e| fail(e.to_string()))?;
        let mut tokenizer = Tokenizer::new(wordpiece);
        tokenizer.with_normalizer(Some(BertNormalizer::new(true, true, None, config.lowercase)));
        tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
        let id = |t: &str| tokenizer.token_to_id(t).ok_or_else(|| fail(format!("vocabulary has no {t} token")));
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        tokenizer.with_post_processor(Some(BertProcessing::new(("[SEP]".into(), sep), ("[CLS]".into(), cls))));
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: config.max_length, ..Default::default() }))
            .map_err(|e| fail(e.to_string()))?;
        Ok(Self { tokenizer, max_length: config.max_length })
    }

    /// Token ids of one text (with `[CLS]`/`[SEP]`, truncated).
    pub fn ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| Error::Tokenizer { model: String::new(), reason: e.to_string() })?;
        Ok(enc.get_ids().to_vec())
    }

    /// `input_ids` and `attention_mask` for a batch of texts, padded with 0 to the longest; and the token count.
    pub fn encode_batch(&self, texts: &[String]) -> Result<(Vec<Tensor>, usize)> {
        let all: Vec<Vec<u32>> = texts.iter().map(|t| self.ids(t)).collect::<Result<_>>()?;
        Self::pad(&all)
    }

    /// `input_ids` and `attention_mask` for token-id sequences a client tokenized with this model's vocabulary
    /// (special tokens included, as [`Self::ids`] gives them), after checking each against the vocabulary and the
    /// longest sequence the model takes; and the token count. `key` names the model in errors.
    pub fn encode_ids(&self, seqs: &[Vec<u32>], key: &str) -> Result<(Vec<Tensor>, usize)> {
        let vocab = self.tokenizer.get_vocab_size(true);
        for seq in seqs {
            if seq.is_empty() {
                return Err(Error::EmptyInput);
            }
            if seq.len() > self.max_length {
                return Err(Error::TooLarge {
                    what: format!("a sequence of {} tokens", seq.len()),
                    limit: format!("{} tokens for model {key}", self.max_length),
                });
            }
            if let Some(&id) = seq.iter().find(|&&id| id as usize >= vocab) {
                return Err(Error::ValueOutOfRange {
                    model: key.to_owned(),
                    input: "input (token ids)".into(),
                    value: i64::from(id),
                    min: 0,
                    max: vocab as i64 - 1,
                });
            }
        }
        Self::pad(seqs)
    }

    fn pad(all: &[Vec<u32>]) -> Result<(Vec<Tensor>, usize)> {
        if all.is_empty() {
            return Err(Error::EmptyInput);
        }
        let longest = all.iter().map(Vec::len).max().unwrap_or(0);
        let tokens = all.iter().map(Vec::len).sum();
        let mut ids = Vec::with_capacity(all.len() * longest);
        let mut mask = Vec::with_capacity(all.len() * longest);
        for seq in all {
            ids.extend(seq.iter().map(|&i| i64::from(i)));
            ids.extend(std::iter::repeat_n(0, longest - seq.len()));
            mask.extend(std::iter::repeat_n(1i64, seq.len()));
            mask.extend(std::iter::repeat_n(0i64, longest - seq.len()));
        }
        let shape = vec![all.len() as i64, longest as i64];
        Ok((
            vec![
                Tensor::new("input_ids", shape.clone(), TensorData::Int64(ids))?,
                Tensor::new("attention_mask", shape, TensorData::Int64(mask))?,
            ],
            tokens,
        ))
    }
}
