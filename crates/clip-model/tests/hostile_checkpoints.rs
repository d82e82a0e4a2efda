//! Hostile `config.json`, `open_clip_config.json` and safetensors headers: each is an error
//! naming the key and value (or file) at fault, found before anything large is allocated.
//!
//! This binary's allocator records the largest single allocation of each thread, and refuses
//! any over 1 GiB (the process then aborts with the size), so "nothing huge is allocated" is
//! checked in-process rather than by watching the machine.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use clip_model::{Checkpoint, ModelError};
use rand::{Rng, SeedableRng};
use serde_json::Value;

/// Forwards to [`System`], noting each request's size; refuses requests over [`REFUSE`].
struct Tracking;

/// No test here needs an allocation this large; a request for one is the bug under test.
const REFUSE: usize = 1 << 30;
/// The largest allocation a rejected (or tiny-fixture) load may make: the fixtures' biggest
/// tensor, the 49408 × 16 f32 token table, is 3.2 MB.
const SMALL: usize = 8 << 20;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the slot may be gone while a thread exits; that allocation goes unnoted.
    let _ = LARGEST.try_with(|c| c.set(c.get().max(size)));
}

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; refusing (a null pointer) is an allowed answer to `alloc`.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        if layout.size() > REFUSE {
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's layout, as `GlobalAlloc::alloc` requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        if layout.size() > REFUSE {
            return std::ptr::null_mut();
        }
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        if new_size > REFUSE {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` came from this allocator (so from `System`) with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (so from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Runs `f` and returns its result with the largest allocation this thread made meanwhile.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|c| c.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(name)
}

/// A copy of fixture `name` in a fresh temporary directory.
fn copy_fixture(name: &str) -> tempfile::TempDir {
    copy_dir(&fixture(name))
}

/// A copy of model directory `dir` in a fresh temporary directory.
fn copy_dir(dir: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
    }
    tmp
}

/// Sets each JSON pointer in `edits` of `dir/file` to its value.
fn edit_json(dir: &Path, file: &str, edits: &[(&str, Value)]) {
    let path = dir.join(file);
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (pointer, value) in edits {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        v.pointer_mut(parent)
            .and_then(Value::as_object_mut)
            .unwrap_or_else(|| panic!("no {parent} in {file}"))
            .insert(key.to_string(), value.clone());
    }
    std::fs::write(&path, v.to_string()).unwrap();
}

/// The error loading `dir` gives, checked to come without a large allocation.
fn load_error(dir: &Path) -> ModelError {
    let (res, largest) = largest_allocation(|| Checkpoint::load(dir, &Device::Cpu));
    assert!(largest < SMALL, "a rejected load allocated {largest} bytes");
    match res {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e,
    }
}

/// The HF fixture with `edits` applied to its `config.json`: the error's message.
fn hf_config_error(edits: &[(&str, Value)]) -> String {
    let dir = copy_fixture("hf_tiny");
    edit_json(dir.path(), "config.json", edits);
    let err = load_error(dir.path());
    let msg = err.to_string();
    assert!(msg.contains("config.json"), "{msg}");
    msg
}

#[test]
fn the_fixtures_load_within_the_allocation_bound() {
    for name in ["hf_tiny", "openclip_tiny"] {
        let (ckpt, largest) =
            largest_allocation(|| Checkpoint::load(&fixture(name), &Device::Cpu).unwrap());
        assert!(largest < SMALL, "{name}: {largest} bytes");
        ckpt.into_model().unwrap();
    }
}

#[test]
fn a_huge_hidden_size_is_named_and_nothing_huge_is_allocated() {
    let msg = hf_config_error(&[("/vision_config/hidden_size", 1_000_000_000.into())]);
    assert!(
        msg.contains("vision_config.hidden_size = 1000000000: exceeds 16384"),
        "{msg}"
    );
    let msg = hf_config_error(&[("/text_config/hidden_size", 1_000_000_000.into())]);
    assert!(
        msg.contains("text_config.hidden_size = 1000000000: exceeds 16384"),
        "{msg}"
    );
}

#[test]
fn huge_layer_counts_are_named() {
    let msg = hf_config_error(&[("/vision_config/num_hidden_layers", 1_000_000_000.into())]);
    assert!(
        msg.contains("vision_config.num_hidden_layers = 1000000000: exceeds 256"),
        "{msg}"
    );
    let msg = hf_config_error(&[(
        "/vision_config/projection_head",
        serde_json::json!({ "layers": 1_000_000_000u64, "hidden_size": 16 }),
    )]);
    assert!(
        msg.contains("vision_config.projection_head.layers = 1000000000: exceeds 64"),
        "{msg}"
    );
    let msg = hf_config_error(&[(
        "/vision_config/projection_head",
        serde_json::json!({ "layers": 2, "hidden_size": 1_000_000_000u64 }),
    )]);
    assert!(
        msg.contains("vision_config.projection_head.hidden_size = 1000000000: exceeds 16384"),
        "{msg}"
    );
}

#[test]
fn huge_images_and_contexts_are_named() {
    let msg = hf_config_error(&[("/vision_config/image_size", 32768.into())]);
    assert!(
        msg.contains("vision_config.image_size = 32768: exceeds 4096"),
        "{msg}"
    );
    // Within the side bound, but 513² tokens of attention per image.
    let msg = hf_config_error(&[("/vision_config/image_size", 4096.into())]);
    assert!(
        msg.contains("vision_config.image_size = 4096: gives 262145 tokens"),
        "{msg}"
    );
    let msg = hf_config_error(&[("/text_config/max_position_embeddings", 1_000_000.into())]);
    assert!(
        msg.contains("text_config.max_position_embeddings = 1000000: gives 1000000 tokens"),
        "{msg}"
    );
    let msg = hf_config_error(&[("/text_config/vocab_size", 1_000_000_000.into())]);
    assert!(
        msg.contains("text_config.vocab_size = 1000000000: exceeds 1048576"),
        "{msg}"
    );
    let msg = hf_config_error(&[("/projection_dim", 1_000_000_000.into())]);
    assert!(
        msg.contains("projection_dim = 1000000000: exceeds 16384"),
        "{msg}"
    );
}

#[test]
fn a_config_the_weights_contradict_is_named_with_the_tensor() {
    let cases: [(&str, Value, &str); 6] = [
        (
            "/vision_config/hidden_size",
            64.into(),
            "vision_config.hidden_size = 64 does not match the weights in",
        ),
        (
            "/vision_config/num_hidden_layers",
            3.into(),
            "vision_config.num_hidden_layers = 3 does not match the weights in",
        ),
        (
            "/vision_config/image_size",
            80.into(),
            "vision_config.image_size = 80 does not match the weights in",
        ),
        (
            "/text_config/vocab_size",
            100.into(),
            "text_config.vocab_size = 100 does not match the weights in",
        ),
        (
            "/text_config/intermediate_size",
            80.into(),
            "text_config.intermediate_size = 80 does not match the weights in",
        ),
        (
            "/projection_dim",
            24.into(),
            "projection_dim = 24 does not match the weights in",
        ),
    ];
    for (pointer, value, want) in cases {
        let msg = hf_config_error(&[(pointer, value)]);
        assert!(msg.contains(want), "{msg}");
        assert!(msg.contains("model.safetensors"), "{msg}");
    }
    let msg = hf_config_error(&[("/vision_config/hidden_size", 64.into())]);
    assert!(
        msg.contains("`vision_model.embeddings.class_embedding` is [32]"),
        "{msg}"
    );
    let msg = hf_config_error(&[("/vision_config/num_hidden_layers", 3.into())]);
    assert!(
        msg.contains("there is no `vision_model.encoder.layers.2.layer_norm1.weight`"),
        "{msg}"
    );
}

/// A zero-sized tensor costs no bytes on disk, so a shape that merely agrees in the
/// dimensions a config names could still let the config size a huge buffer: whole shapes
/// are compared.
#[test]
fn a_zero_sized_tensor_does_not_vouch_for_a_huge_patch() {
    let dir = copy_fixture("hf_tiny");
    edit_json(
        dir.path(),
        "config.json",
        &[
            ("/vision_config/image_size", 4096.into()),
            ("/vision_config/patch_size", 4096.into()),
        ],
    );
    let path = dir.path().join("model.safetensors");
    let mut t = candle_core::safetensors::load(&path, &Device::Cpu).unwrap();
    let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu).unwrap();
    t.insert(
        "vision_model.embeddings.patch_embedding.weight".into(),
        zeros(&[0, 3, 4096, 4096]),
    );
    t.insert(
        "vision_model.embeddings.position_embedding.weight".into(),
        zeros(&[2, 32]),
    );
    candle_core::safetensors::save(&t, &path).unwrap();
    let msg = load_error(dir.path()).to_string();
    assert!(
        msg.contains("vision_config.hidden_size = 32 does not match the weights")
            && msg.contains("[0, 3, 4096, 4096]"),
        "{msg}"
    );
}

#[test]
fn open_clip_sizes_are_named_by_their_open_clip_keys() {
    let load = |edits: &[(&str, Value)]| {
        let dir = copy_fixture("openclip_tiny");
        edit_json(dir.path(), "open_clip_config.json", edits);
        let msg = load_error(dir.path()).to_string();
        assert!(msg.contains("open_clip_config.json"), "{msg}");
        msg
    };
    let msg = load(&[("/model_cfg/vision_cfg/width", 1_200_000_000.into())]);
    assert!(
        msg.contains("vision_cfg.width = 1200000000: exceeds 16384"),
        "{msg}"
    );
    let msg = load(&[("/model_cfg/vision_cfg/layers", 100_000.into())]);
    assert!(
        msg.contains("vision_cfg.layers = 100000: exceeds 256"),
        "{msg}"
    );
    let msg = load(&[("/model_cfg/vision_cfg/image_size", 32768.into())]);
    assert!(
        msg.contains("vision_cfg.image_size = 32768: exceeds 4096"),
        "{msg}"
    );
    let msg = load(&[("/model_cfg/vision_cfg/layers", 3.into())]);
    assert!(
        msg.contains("vision_cfg.layers = 3 does not match the weights")
            && msg.contains("open_clip_model.safetensors"),
        "{msg}"
    );
    let msg = load(&[("/model_cfg/text_cfg/context_length", 32.into())]);
    assert!(
        msg.contains("text_cfg.context_length = 32 does not match the weights"),
        "{msg}"
    );
}

/// The fixture files a fuzz case starts from, split so the header can be mutated alone.
struct Seed {
    dir: PathBuf,
    config_file: &'static str,
    weights_file: &'static str,
    config: Vec<u8>,
    /// The 8-byte length prefix and the JSON header.
    header: Vec<u8>,
    data: Vec<u8>,
}

impl Seed {
    fn new(dir: PathBuf, config_file: &'static str, weights_file: &'static str) -> Self {
        let weights = std::fs::read(dir.join(weights_file)).unwrap();
        let n = u64::from_le_bytes(weights[..8].try_into().unwrap()) as usize;
        Self {
            config: std::fs::read(dir.join(config_file)).unwrap(),
            dir,
            config_file,
            weights_file,
            header: weights[..8 + n].to_vec(),
            data: weights[8 + n..].to_vec(),
        }
    }
}

/// Values that break size arithmetic, to put where a number was.
const EXTREMES: &[&str] = &[
    "0",
    "1",
    "2",
    "3",
    "-1",
    "7",
    "4096",
    "65536",
    "1000000000",
    "4294967296",
    "9007199254740993",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "-1e308",
    "0.5",
    "null",
    "[]",
    "{}",
    "\"\"",
];

/// One random edit of `bytes`: a flipped bit, a replaced, inserted or deleted byte, a cut,
/// or a number replaced by an extreme value.
fn mutate(bytes: &mut Vec<u8>, rng: &mut impl Rng) {
    let len = bytes.len();
    match rng.random_range(0..7) {
        0 if len > 0 => {
            let i = rng.random_range(0..len);
            bytes[i] ^= 1 << rng.random_range(0..8);
        }
        1 if len > 0 => {
            let i = rng.random_range(0..len);
            bytes[i] = rng.random();
        }
        2 => {
            let i = rng.random_range(0..=len);
            bytes.insert(i, *b"{}[],:\"0-e".get(rng.random_range(0..10)).unwrap());
        }
        3 if len > 0 => {
            let i = rng.random_range(0..len);
            let n = rng.random_range(1..=(len - i).min(16));
            bytes.drain(i..i + n);
        }
        4 => bytes.truncate(rng.random_range(0..=len)),
        _ => {
            // A run of digits, replaced whole.
            let starts: Vec<usize> = (0..len)
                .filter(|&i| {
                    bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_digit())
                })
                .collect();
            if starts.is_empty() {
                return;
            }
            let i = starts[rng.random_range(0..starts.len())];
            let end = (i..len)
                .find(|&j| !bytes[j].is_ascii_digit())
                .unwrap_or(len);
            let with = EXTREMES[rng.random_range(0..EXTREMES.len())].as_bytes();
            bytes.splice(i..end, with.iter().copied());
        }
    }
}

/// Random edits of the fixtures' configs and safetensors headers (and length prefix),
/// loaded through [`Checkpoint::load`]: each must return (no panic, no hang) without a large
/// allocation, and what loads must build. `CLIP_FUZZ_ITERS` and `CLIP_FUZZ_SEED` run it
/// longer or elsewhere; a failure prints the case's seed and iteration.
#[test]
fn fuzzed_configs_and_headers_never_panic_or_allocate_much() {
    let iters: usize = std::env::var("CLIP_FUZZ_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let seed: u64 = std::env::var("CLIP_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x0C11_F022);
    // A quantized checkpoint too: int8 weights with their scales.
    let int8 = tempfile::tempdir().unwrap();
    let ckpt = Checkpoint::load(&fixture("hf_tiny"), &Device::Cpu).unwrap();
    let ckpt = ckpt.quantized().unwrap();
    clip_model::save_hf(
        int8.path(),
        &ckpt.config,
        &ckpt.preprocess,
        &ckpt.weights,
        None,
    )
    .unwrap();
    let seeds = [
        Seed::new(fixture("hf_tiny"), "config.json", "model.safetensors"),
        Seed::new(
            int8.path().to_path_buf(),
            "config.json",
            "model.safetensors",
        ),
        Seed::new(
            fixture("openclip_tiny"),
            "open_clip_config.json",
            "open_clip_model.safetensors",
        ),
    ];
    let dirs: Vec<tempfile::TempDir> = seeds.iter().map(|s| copy_dir(&s.dir)).collect();
    // The header each directory's weights file holds now: rewritten only when it changes.
    let mut written: Vec<Vec<u8>> = seeds.iter().map(|s| s.header.clone()).collect();
    let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(seed);
    let (mut loaded, mut rejected) = (0usize, 0usize);
    let started = std::time::Instant::now();
    for iter in 0..iters {
        let which = rng.random_range(0..seeds.len());
        let (s, dir) = (&seeds[which], dirs[which].path());
        let mut config = s.config.clone();
        let mut header = s.header.clone();
        // Config, header, or both; one to three edits each.
        let target = rng.random_range(0..3);
        for _ in 0..rng.random_range(1..=3) {
            if target != 1 {
                mutate(&mut config, &mut rng);
            }
            if target != 0 {
                // The JSON header, its length prefix kept in step so that it is parsed.
                let mut json = header.split_off(8);
                mutate(&mut json, &mut rng);
                header = (json.len() as u64).to_le_bytes().to_vec();
                header.extend(json);
            }
        }
        if target != 0 && rng.random_range(0..8) == 0 {
            // The length prefix itself: off by a little, or anything.
            let n = u64::from_le_bytes(header[..8].try_into().unwrap());
            let m = if rng.random() {
                n.wrapping_add(rng.random_range(0..16)).wrapping_sub(8)
            } else {
                rng.random()
            };
            header[..8].copy_from_slice(&m.to_le_bytes());
        }
        std::fs::write(dir.join(s.config_file), &config).unwrap();
        if written[which] != header {
            let mut weights = header.clone();
            weights.extend_from_slice(&s.data);
            std::fs::write(dir.join(s.weights_file), &weights).unwrap();
            written[which] = header.clone();
        }
        let run = std::panic::catch_unwind(|| {
            largest_allocation(|| {
                Checkpoint::load(dir, &Device::Cpu).and_then(Checkpoint::into_model)
            })
        });
        let (res, largest) = run.unwrap_or_else(|panic| {
            eprintln!(
                "seed {seed} iteration {iter} panicked on {}:\n{}",
                s.dir.display(),
                String::from_utf8_lossy(if target == 1 { &header[8..] } else { &config })
            );
            std::panic::resume_unwind(panic)
        });
        assert!(
            largest < SMALL,
            "seed {seed} iteration {iter}: {largest} bytes allocated"
        );
        match res {
            Ok(_) => loaded += 1,
            Err(_) => rejected += 1,
        }
    }
    eprintln!(
        "{iters} cases (seed {seed}) in {:.1?}: {loaded} loaded, {rejected} rejected",
        started.elapsed()
    );
    assert_eq!(loaded + rejected, iters);
    assert!(rejected > iters / 2, "the mutations barely change anything");
}
