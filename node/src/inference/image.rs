//! Images in for image classifiers (a model's `[image]` section): a JPEG or PNG is decoded (with bounds on its size),
//! its shorter side resized, its centre cropped, its RGB scaled to 0-1 and normalised per channel into the model's
//! input tensor; the pixels are cached by the image's content, like the tokenizer's output; and the model's class
//! probabilities are named by its labels.
//!
//! Bounds (`[image]`, defaults): 8 MiB of file, 8,192 pixels a side, 16 Mpixels, and a longest side at most 16 times
//! the shortest, all read from the header before anything is decoded; as many decodes at once as the node has cores
//! (beyond, "overloaded"), since each holds about 10 bytes a pixel while it runs.
//!
//! An image travels as the model's one input under the name [`IMAGE_INPUT`]: a `UINT8` tensor of shape `[1, n]`
//! holding the encoded file. So it is priced per image (one sample), hashed into the receipt as it was sent (a client
//! checks its input hash against its own bytes), kept in the audit record as sent, and a validator's re-execution
//! goes through the same preprocessing ([`crate::inference::Engine::infer`] turns it into pixels).

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use image::imageops::FilterType;
pub use mlbridge_sdk::protocol::{ClassScore, IMAGE_INPUT, image_tensor};
use mlbridge_sdk::{Tensor, TensorData};

use super::config::ImageConfig;
use crate::{Error, Result};

/// Bytes of preprocessed pixels the cache of one model keeps.
const CACHE_BYTES: u64 = 64 << 20;

/// Longest side over shortest accepted: the shorter side is resized to `resize`, so a long thin image would
/// otherwise resize to a huge one (8192 × 1 to 2,097,152 × 256) before its centre is cropped.
const MAX_ASPECT: u64 = 16;

/// The encoded image of a request in the image form (one `UINT8` tensor named [`IMAGE_INPUT`], shape `[1, n]`),
/// checked against the model's limits; `None` for any other request (checked as tensors).
pub fn encoded<'a>(config: &ImageConfig, model: &str, inputs: &'a [Tensor]) -> Result<Option<&'a [u8]>> {
    let [t] = inputs else { return Ok(None) };
    if t.name() != IMAGE_INPUT {
        return Ok(None);
    }
    let TensorData::Uint8(bytes) = t.data() else {
        return Err(Error::WrongDataType {
            model: model.to_owned(),
            input: IMAGE_INPUT.into(),
            expected: mlbridge_sdk::DataType::Uint8,
            actual: t.datatype(),
        });
    };
    if t.shape().len() != 2 || t.shape()[0] != 1 || bytes.is_empty() {
        return Err(Error::WrongShape {
            model: model.to_owned(),
            input: IMAGE_INPUT.into(),
            expected: "[1, n]: one encoded image (JPEG or PNG) of n bytes".into(),
            actual: t.shape().to_vec(),
        });
    }
    if bytes.len() > config.max_image_bytes {
        return Err(Error::TooLarge {
            what: format!("an image of {} bytes", bytes.len()),
            limit: format!("{} bytes for model {model}", config.max_image_bytes),
        });
    }
    Ok(Some(bytes))
}

/// An image classifier's preprocessing and labels.
pub struct ImageClassifier {
    config: ImageConfig,
    /// The model's input tensor name.
    input: String,
    labels: Vec<String>,
    cache: moka::sync::Cache<[u8; 32], Arc<Vec<f32>>>,
    /// Images being decoded at once (one per core): each may take about 10 bytes a pixel while it decodes.
    decoding: tokio::sync::Semaphore,
    decoding_places: usize,
}

impl std::fmt::Debug for ImageClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageClassifier").field("labels", &self.labels.len()).finish_non_exhaustive()
    }
}

impl ImageClassifier {
    /// Load model `key`'s labels from `dir` (their sha256 checked against the config); `input` is the model's input
    /// tensor and `classes` the length of its output.
    pub fn load(dir: &Path, config: &ImageConfig, input: &str, classes: usize, key: &str) -> Result<Self> {
        let path = config.verified_labels(dir, key)?;
        let bad = |reason: String| Error::Config { path: path.clone(), reason };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        let labels: Vec<String> =
            serde_json::from_str(&text).map_err(|e| bad(format!("not a JSON list of names: {e}")))?;
        if labels.len() != classes {
            return Err(bad(format!("{} labels for a model with {classes} classes", labels.len())));
        }
        let cache = moka::sync::Cache::builder()
            .weigher(|_, v: &Arc<Vec<f32>>| u32::try_from(v.len() * 4).unwrap_or(u32::MAX))
            .max_capacity(CACHE_BYTES)
            .build();
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let decoding = tokio::sync::Semaphore::new(cores);
        Ok(Self { config: config.clone(), input: input.to_owned(), labels, cache, decoding, decoding_places: cores })
    }

    /// The model's input tensor for `bytes` (one image), from the cache when the same bytes came before. Decodes and
    /// resizes: call it on a blocking thread.
    pub fn pixels(&self, bytes: &[u8], key: &str) -> Result<Tensor> {
        use sha2::{Digest, Sha256};
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        let pixels = match self.cache.get(&digest) {
            Some(p) => p,
            None => {
                // Decodes at once are bounded (each holds memory): beyond, "overloaded" rather than a queue.
                let Ok(_decoding) = self.decoding.try_acquire() else {
                    return Err(Error::Overloaded { model: key.to_owned(), capacity: self.decoding_places });
                };
                let p = Arc::new(preprocess(&self.config, bytes, key)?);
                self.cache.insert(digest, p.clone());
                p
            }
        };
        let side = i64::from(self.config.crop);
        Tensor::new(self.input.clone(), vec![1, 3, side, side], TensorData::Fp32(pixels.as_ref().clone()))
            .map_err(Error::Sdk)
    }

    /// How many preprocessed images are cached.
    pub fn cached_images(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    /// The `k` most probable classes of one row of probabilities, most probable first (NaN never ranks).
    pub fn top_k(&self, probabilities: &[f32], k: usize) -> Vec<ClassScore> {
        let mut order: Vec<usize> = (0..probabilities.len()).filter(|&i| !probabilities[i].is_nan()).collect();
        order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]).then(a.cmp(&b)));
        order
            .into_iter()
            .take(k)
            .map(|i| ClassScore {
                index: i as u32,
                label: self.labels.get(i).cloned().unwrap_or_default(),
                score: probabilities[i],
            })
            .collect()
    }
}

/// Whether a `w` × `h` image is within the config's bounds (a reason if not).
fn check_size(config: &ImageConfig, w: u32, h: u32) -> std::result::Result<(), String> {
    let (short, long) = (u64::from(w.min(h)), u64::from(w.max(h)));
    if short == 0 {
        return Err("the image is empty".into());
    }
    if long > u64::from(config.max_side) || short * long > config.max_pixels {
        return Err(format!(
            "{w} x {h} pixels is more than {} a side or {} in all",
            config.max_side, config.max_pixels
        ));
    }
    if long > MAX_ASPECT * short {
        return Err(format!("{w} x {h} pixels is more than {MAX_ASPECT} times as long as it is wide"));
    }
    Ok(())
}

/// Decode `bytes` (JPEG or PNG, within the config's bounds), resize its shorter side to `resize` (bilinear), crop the
/// centre `crop` × `crop`, scale to 0-1 and normalise: channel-first floats.
fn preprocess(config: &ImageConfig, bytes: &[u8], key: &str) -> Result<Vec<f32>> {
    let bad = |reason: String| Error::BadImage { model: key.to_owned(), reason };
    let mut reader =
        image::ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| bad(e.to_string()))?;
    match reader.format() {
        Some(image::ImageFormat::Jpeg | image::ImageFormat::Png) => {}
        _ => return Err(bad("not a JPEG or PNG image".into())),
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(config.max_side);
    limits.max_image_height = Some(config.max_side);
    // The decoded image and the decoder's own buffers.
    limits.max_alloc = Some(config.max_pixels * 4 + (64 << 20));
    reader.limits(limits);
    // The size from the header first: nothing is decoded for an image beyond the bounds.
    let header = image::ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| bad(e.to_string()))?;
    let (w, h) = header.into_dimensions().map_err(|e| bad(e.to_string()))?;
    check_size(config, w, h).map_err(bad)?;
    let decoded = reader.decode().map_err(|e| bad(e.to_string()))?.into_rgb8();
    if decoded.dimensions() != (w, h) {
        return Err(bad("the image's size differs from its header's".into()));
    }
    // The shorter side to `resize`, the longer in proportion (truncated, as torchvision's Resize does), at least
    // `crop`.
    let (short, long) = (w.min(h), w.max(h));
    let scaled_long = ((u64::from(long) * u64::from(config.resize)) / u64::from(short)).max(u64::from(config.crop));
    let scaled_long = u32::try_from(scaled_long).map_err(|_| bad("the image is too elongated".into()))?;
    let (rw, rh) = if w <= h { (config.resize, scaled_long) } else { (scaled_long, config.resize) };
    let resized = image::imageops::resize(&decoded, rw, rh, FilterType::Triangle);
    let (left, top) = ((rw - config.crop) / 2, (rh - config.crop) / 2);
    let side = config.crop as usize;
    let mut out = vec![0f32; 3 * side * side];
    for y in 0..side {
        for x in 0..side {
            let p = resized.get_pixel(left + x as u32, top + y as u32).0;
            for c in 0..3 {
                let v = f32::from(p[c]) / 255.0;
                out[c * side * side + y * side + x] = (v - config.mean[c]) / config.std[c];
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ImageConfig {
        ImageConfig {
            resize: 8,
            crop: 4,
            mean: [0.5; 3],
            std: [0.25; 3],
            labels: "labels.json".into(),
            labels_sha256: String::new(),
            max_image_bytes: 1 << 20,
            max_side: 64,
            max_pixels: 40 * 40,
        }
    }

    fn png(w: u32, h: u32, pixel: impl Fn(u32, u32) -> [u8; 3]) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb(pixel(x, y)));
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn an_image_is_resized_cropped_and_normalised_channel_first() {
        // A flat colour stays flat through resizing: every pixel of each channel is (v / 255 - 0.5) / 0.25.
        let bytes = png(16, 32, |_, _| [255, 0, 51]);
        let px = preprocess(&config(), &bytes, "m/1").unwrap();
        assert_eq!(px.len(), 3 * 4 * 4);
        let want = [(1.0 - 0.5) / 0.25, (0.0 - 0.5) / 0.25, (0.2 - 0.5) / 0.25];
        for c in 0..3 {
            assert!(px[c * 16..(c + 1) * 16].iter().all(|v| (v - want[c]).abs() < 1e-6), "channel {c}: {px:?}");
        }
        // Left half black, right half white, wide: the centre crop keeps both halves, black on the left.
        let bytes = png(32, 16, |x, _| if x < 16 { [0; 3] } else { [255; 3] });
        let px = preprocess(&config(), &bytes, "m/1").unwrap();
        assert!(px[0] < -1.9 && px[3] > 1.9, "{:?}", &px[..4]);
    }

    #[test]
    fn hostile_images_are_refused_with_a_reason() {
        let c = config();
        // Not an image, a truncated PNG, a GIF, and an image larger than the config allows on a side.
        let full = png(16, 16, |_, _| [1, 2, 3]);
        let gif = b"GIF89a\x01\x00\x01\x00\x00\x00\x00;".to_vec();
        for (what, bytes) in [
            ("text", b"hello, not an image".to_vec()),
            ("truncated", full[..full.len() / 2].to_vec()),
            ("gif", gif),
            ("too large", png(65, 8, |_, _| [0; 3])),
            ("too many pixels", png(41, 41, |_, _| [0; 3])),
            ("long and thin", png(64, 3, |_, _| [0; 3])),
        ] {
            let err = preprocess(&c, &bytes, "m/1").unwrap_err();
            assert!(matches!(err, Error::BadImage { .. }), "{what}: {err}");
        }
        // The image form of a request: one UINT8 [1, n] tensor within the byte limit.
        let ok = [image_tensor(full.clone())];
        assert_eq!(encoded(&c, "m/1", &ok).unwrap(), Some(full.as_slice()));
        let flat = [Tensor::new(IMAGE_INPUT, vec![full.len() as i64], TensorData::Uint8(full.clone())).unwrap()];
        assert!(matches!(encoded(&c, "m/1", &flat), Err(Error::WrongShape { .. })));
        let floats = [Tensor::new(IMAGE_INPUT, vec![1, 2], TensorData::Fp32(vec![0.0; 2])).unwrap()];
        assert!(matches!(encoded(&c, "m/1", &floats), Err(Error::WrongDataType { .. })));
        let big = [image_tensor(vec![0; (1 << 20) + 1])];
        assert!(matches!(encoded(&c, "m/1", &big), Err(Error::TooLarge { .. })));
        let other = [Tensor::new("pixels", vec![1, 2], TensorData::Fp32(vec![0.0; 2])).unwrap()];
        assert_eq!(encoded(&c, "m/1", &other).unwrap(), None);
    }
}
