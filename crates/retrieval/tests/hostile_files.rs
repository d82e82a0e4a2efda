//! Index files that change underneath an open index, or arrive damaged in any way: every call
//! returns `Ok` or `Err`, never a crash, a hang or an unbounded allocation.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use retrieval::testing::unit_rows;
use retrieval::{
    AnnParams, DType, Entries, ImageEntry, Index, IndexSpec, OpenOptions, RetrievalError,
    SearchMode, SearchOptions, ANN_FILE, MANIFEST_FILE,
};

/// An image index of `n` unit vectors with a rows file and saved IVF lists.
fn image_index(dir: &Path, n: usize, dim: usize, dtype: DType) -> Index {
    let files = (0..n)
        .map(|i| ImageEntry {
            path: PathBuf::from(format!("album {}/img{i}.jpg", i % 7)),
            size: 1000 + i as u64,
            mtime_ns: 1_700_000_000_000_000_000 + i as i64,
        })
        .collect();
    let spec = IndexSpec {
        model: "test-model".into(),
        dimension: dim,
        count: n,
        dtype,
        entries: Entries::Images {
            root: "/photos".into(),
            files,
        },
    };
    Index::from_vectors(spec, unit_rows(n, dim, 11))
        .unwrap()
        .save(dir)
        .unwrap();
    let idx = Index::open(dir).unwrap();
    let params = AnnParams {
        lists: 8,
        probes: 3,
        ..AnnParams::default()
    };
    idx.save_ann(&params).unwrap();
    idx
}

fn truncate(path: &Path) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(0)
        .unwrap();
}

fn assert_changed(err: RetrievalError, file: &Path) {
    let msg = err.to_string();
    match err {
        RetrievalError::ChangedWhileMapped { path } => assert_eq!(path, file, "{msg}"),
        other => panic!(
            "expected ChangedWhileMapped for {}, got {other}",
            file.display()
        ),
    }
    assert!(
        msg.contains("changed while mapped") && msg.contains("reopen"),
        "{msg}"
    );
}

/// `truncate -s 0` of a served index's vectors and rows files: searches and row reads fail
/// with an error naming the file, and the process lives (this used to die of SIGBUS).
#[cfg(target_os = "linux")]
#[test]
fn files_truncated_while_mapped_are_errors_not_sigbus() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("idx");
    let (n, dim) = (3000, 64);
    image_index(&dir, n, dim, DType::F32);
    let idx = Index::open(&dir).unwrap();
    let queries = unit_rows(6, dim, 5);
    let one = &queries[..dim];
    assert_eq!(idx.search(&queries, dim, 5).unwrap().len(), 6);
    assert!(idx.is_current() && idx.check_intact().is_ok());
    let vectors = dir.join(&idx.manifest().vectors_file);
    let rows = idx.entries().rows_file().unwrap().to_path_buf();

    truncate(&vectors);
    // The batch path (packed panels, all threads) and the single-query path.
    assert_changed(idx.search(&queries, dim, 5).unwrap_err(), &vectors);
    assert_changed(idx.search(one, dim, 5).unwrap_err(), &vectors);
    let ann = SearchOptions {
        mode: SearchMode::Ann,
        ..SearchOptions::default()
    };
    assert_changed(idx.search_with(one, dim, 5, &ann).unwrap_err(), &vectors);
    assert_changed(idx.check_intact().unwrap_err(), &vectors);
    assert!(!idx.is_current());
    // Rows still read: only the vectors are gone.
    assert!(idx
        .label(n - 1)
        .unwrap()
        .ends_with(&format!("img{}.jpg", n - 1)));

    truncate(&rows);
    assert_changed(idx.label(n - 1).unwrap_err(), &rows);
    assert_changed(idx.entries().image(0).unwrap_err(), &rows);
    assert!(idx.entries().images().all(|r| r.is_err()));
    // Reopening reports the damage the usual way.
    let err = Index::open(&dir).unwrap_err().to_string();
    assert!(err.contains("damaged"), "{err}");
}

/// A rebuilt index (new files renamed into place) is no longer current; the open one still
/// answers from the files it holds.
#[test]
fn a_rebuilt_index_is_not_current() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("idx");
    let dim = 16;
    let idx = image_index(&dir, 50, dim, DType::F16);
    assert!(idx.is_current());
    Index::from_vectors(idx.spec().unwrap(), unit_rows(50, dim, 99))
        .unwrap()
        .save(&dir)
        .unwrap();
    assert!(!idx.is_current());
    assert_eq!(
        idx.search(&unit_rows(1, dim, 3), dim, 3).unwrap()[0].len(),
        3
    );
    assert!(Index::open(&dir).unwrap().is_current());
}

/// The guard takes only faults in index files: a fault in another mapping still kills the
/// process with SIGBUS, as it would without the guard (run in a child process).
#[cfg(target_os = "linux")]
#[test]
fn other_faults_still_kill_the_process() {
    const CHILD: &str = "RETRIEVAL_TEST_FOREIGN_SIGBUS";
    if std::env::var_os(CHILD).is_some() {
        let tmp = tempfile::tempdir().unwrap();
        // Installs the guard.
        let _idx = image_index(&tmp.path().join("idx"), 10, 8, DType::F32);
        let path = tmp.path().join("other");
        std::fs::write(&path, vec![7u8; 3 * 4096]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: the point of the test: the file is truncated under the map, and the read
        // below must fault.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        truncate(&path);
        let x = std::hint::black_box(&map[..])[2 * 4096];
        eprintln!("read {x} from a truncated file without a fault");
        std::process::exit(0);
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "other_faults_still_kill_the_process",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGBUS),
        "{:?}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The files of a small valid index, by name.
struct Files {
    names: Vec<String>,
    bytes: Vec<Vec<u8>>,
}

impl Files {
    fn read(dir: &Path) -> Self {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let bytes = names
            .iter()
            .map(|n| std::fs::read(dir.join(n)).unwrap())
            .collect();
        Self { names, bytes }
    }

    fn write(&self, dir: &Path) {
        if dir.exists() {
            std::fs::remove_dir_all(dir).unwrap();
        }
        std::fs::create_dir_all(dir).unwrap();
        for (n, b) in self.names.iter().zip(&self.bytes) {
            std::fs::write(dir.join(n), b).unwrap();
        }
    }

    fn index_of(&self, name: &str) -> usize {
        self.names.iter().position(|n| n == name).unwrap()
    }
}

/// Numbers that break arithmetic.
const EXTREMES: [u64; 10] = [
    0,
    1,
    7,
    0xff,
    0x7fff_ffff,
    0xffff_ffff,
    0x1_0000_0000,
    0x7fff_ffff_ffff_ffff,
    0xffff_ffff_ffff_fff8,
    u64::MAX,
];

/// One random change to `b`: flipped bits, inserted, deleted or overwritten bytes, a cut, or
/// an extreme little-endian integer at an (often aligned) offset.
fn mutate(rng: &mut Xoshiro256PlusPlus, b: &mut Vec<u8>) -> String {
    let at = |rng: &mut Xoshiro256PlusPlus, len: usize| {
        if len == 0 {
            0
        } else if rng.random_bool(0.5) {
            // Header-heavy: most parsing happens in the first bytes.
            rng.random_range(0..len.min(128))
        } else {
            rng.random_range(0..len)
        }
    };
    match rng.random_range(0..6) {
        0 => {
            let i = at(rng, b.len());
            if i < b.len() {
                b[i] ^= 1 << rng.random_range(0..8);
            }
            format!("flip at {i}")
        }
        1 => {
            let i = at(rng, b.len());
            let n = rng.random_range(1..16);
            let ins: Vec<u8> = (0..n).map(|_| rng.random()).collect();
            b.splice(i..i, ins);
            format!("insert {n} at {i}")
        }
        2 => {
            let i = at(rng, b.len());
            let n = rng.random_range(1..16).min(b.len() - i);
            b.drain(i..i + n);
            format!("delete {n} at {i}")
        }
        3 => {
            let i = at(rng, b.len());
            b.truncate(i);
            format!("cut at {i}")
        }
        4 => {
            let i = at(rng, b.len()) & !7;
            let v = EXTREMES[rng.random_range(0..EXTREMES.len())];
            let bytes = v.to_le_bytes();
            let w = [1, 2, 4, 8][rng.random_range(0..4)];
            for (k, x) in bytes.iter().take(w).enumerate() {
                if let Some(y) = b.get_mut(i + k) {
                    *y = *x;
                }
            }
            format!("u{} {v:#x} at {i}", w * 8)
        }
        _ => {
            let i = at(rng, b.len());
            let n = rng.random_range(1..64).min(b.len() - i);
            let v: u8 = [0, 0xff, b'9', b'"', b'-'][rng.random_range(0..5)];
            b[i..i + n].fill(v);
            format!("fill {n} with {v:#x} at {i}")
        }
    }
}

/// A manifest with one field set to a hostile value (the JSON stays valid); `None` when an
/// earlier mutation left no JSON object.
fn mutate_manifest_field(rng: &mut Xoshiro256PlusPlus, json: &[u8]) -> Option<(Vec<u8>, String)> {
    let mut v: serde_json::Value = serde_json::from_slice(json).ok()?;
    let obj = v.as_object_mut()?;
    let keys: Vec<String> = obj.keys().cloned().collect();
    let key = &keys[rng.random_range(0..keys.len())];
    let values = [
        serde_json::json!(0),
        serde_json::json!(1),
        serde_json::json!(-1),
        serde_json::json!(u32::MAX),
        serde_json::json!(1u64 << 32),
        serde_json::json!(u64::MAX),
        serde_json::json!(1e300),
        serde_json::json!("../../etc/passwd"),
        serde_json::json!("vectors-1.safetensors"),
        serde_json::json!("rows-1.bin"),
        serde_json::json!(null),
        serde_json::json!({"kind": "ids"}),
        serde_json::json!({"file": "rows-1.bin", "bytes": 1u64 << 40, "crc32": 0}),
    ];
    let new = values[rng.random_range(0..values.len())].clone();
    let what = format!("manifest {key} = {new}");
    obj.insert(key.clone(), new);
    Some((serde_json::to_vec(&v).unwrap(), what))
}

/// Rewrites the manifest's record of `file` (length and CRC-32) to match its bytes, so that a
/// mutated data file passes the checks at open and reaches the parsers behind them.
fn fix_up_manifest(files: &mut Files, file: &str) {
    let m = files.index_of(MANIFEST_FILE);
    let data = &files.bytes[files.index_of(file)];
    let (len, crc) = (data.len() as u64, crc32fast::hash(data));
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&files.bytes[m]) else {
        return;
    };
    if !v.is_object() || (file.starts_with("rows-") && !v["rows"].is_object()) {
        return;
    }
    if file.starts_with("vectors-") {
        v["vectors_bytes"] = len.into();
        v["vectors_crc32"] = crc.into();
    } else if file.starts_with("rows-") {
        v["rows"]["bytes"] = len.into();
        v["rows"]["crc32"] = crc.into();
    }
    files.bytes[m] = serde_json::to_vec(&v).unwrap();
}

/// Everything a server does with an index: open (with and without the checksum), search
/// exactly and by the saved lists, label hits, read rows, check it.
fn exercise(dir: &Path, dim: usize, queries: &[f32], verify: bool) -> usize {
    let opts = OpenOptions {
        verify_checksum: verify,
    };
    let Ok(idx) = Index::open_with(dir, opts) else {
        return 0;
    };
    let mut calls = 1;
    let q_dim = idx.dim();
    // Queries of the index's own dimension (a manifest may claim another).
    let q: Vec<f32> = if q_dim == dim {
        queries.to_vec()
    } else if q_dim <= 4096 {
        unit_rows(2, q_dim, 1)
    } else {
        Vec::new()
    };
    for k in [0, 1, 10, 1000] {
        calls += 1;
        if let Ok(hits) = idx.search(&q, q_dim, k) {
            for h in hits.iter().flatten().take(5) {
                let _ = idx.label(h.id);
                let _ = idx.entries().image(h.id);
            }
        }
    }
    for i in [0, 1, idx.len().saturating_sub(1), idx.len(), usize::MAX] {
        calls += 1;
        let _ = idx.label(i);
        let _ = idx.entries().image(i);
        let _ = idx.entries().caption(i);
    }
    let params = AnnParams {
        probes: 3,
        ..AnnParams::default()
    };
    calls += 1;
    if let Ok(Some(_)) = idx.load_saved_ann(&params) {
        let ann = SearchOptions {
            mode: SearchMode::Ann,
            ann: params,
            ..SearchOptions::default()
        };
        calls += 1;
        let _ = idx.search_with(&q, q_dim, 10, &ann);
    }
    let _ = idx.check_intact();
    let _ = idx.is_current();
    let _ = idx.spec();
    calls
}

/// A bounded random-mutation run over the four index files: the manifest (bytes and fields),
/// the rows file, the vectors file and the saved IVF lists, each with the manifest's length
/// and checksum fixed up half of the time so that the parsers behind those checks are reached.
/// `RETRIEVAL_FUZZ_SECS` runs it longer.
#[test]
fn mutated_index_files_are_errors_never_crashes() {
    let secs: f64 = std::env::var("RETRIEVAL_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let tmp = tempfile::tempdir().unwrap();
    let dim = 8;
    let queries = unit_rows(3, dim, 2);
    let mut runs = 0usize;
    let mut calls = 0usize;
    let mut opened = 0usize;
    let started = Instant::now();
    for (round, dtype) in [DType::F32, DType::F16].into_iter().cycle().enumerate() {
        if started.elapsed() > Duration::from_secs_f64(secs) {
            break;
        }
        let orig = tmp.path().join(format!("orig{round}"));
        if !orig.exists() {
            image_index(&orig, 40, dim, dtype);
        }
        let base = Files::read(&orig);
        assert_eq!(base.names.len(), 4, "{:?}", base.names);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(round as u64);
        let work = tmp.path().join("work");
        for _ in 0..200 {
            let mut files = Files {
                names: base.names.clone(),
                bytes: base.bytes.clone(),
            };
            let mut what = Vec::new();
            for _ in 0..rng.random_range(1..4) {
                let f = rng.random_range(0..files.names.len());
                let name = files.names[f].clone();
                let field = (name == MANIFEST_FILE && rng.random_bool(0.5))
                    .then(|| mutate_manifest_field(&mut rng, &files.bytes[f]))
                    .flatten();
                if let Some((b, w)) = field {
                    files.bytes[f] = b;
                    what.push(w);
                } else {
                    let w = mutate(&mut rng, &mut files.bytes[f]);
                    what.push(format!("{name}: {w}"));
                    if name != MANIFEST_FILE && name != ANN_FILE && rng.random_bool(0.5) {
                        fix_up_manifest(&mut files, &name);
                        what.push("manifest fixed up".into());
                    }
                }
            }
            files.write(&work);
            let verify = rng.random_bool(0.3);
            let run = std::panic::catch_unwind(|| exercise(&work, dim, &queries, verify));
            match run {
                Ok(n) => {
                    calls += n;
                    opened += (n > 0) as usize;
                }
                Err(_) => panic!(
                    "round {round} ({dtype:?}), run {runs}: a panic after {}",
                    what.join("; ")
                ),
            }
            runs += 1;
        }
    }
    eprintln!(
        "fuzz: {runs} mutated indexes in {:.1} s, {opened} opened, {calls} API calls",
        started.elapsed().as_secs_f64()
    );
    assert!(runs >= 200 && opened > 0, "{runs} runs, {opened} opened");
}
