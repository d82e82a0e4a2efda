use super::*;
use crate::limits::MAX_RECORD_BYTES;
use crate::CsvOptions;
use std::io::Write;

fn png(path: &Path, shade: u8) {
    RgbImage::from_pixel(8, 6, image::Rgb([shade, 0, 0]))
        .save(path)
        .unwrap();
}

fn load_all(set: &SampleSet) -> (Vec<Sample>, Vec<(String, SkipReason)>) {
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for i in 0..set.len() {
        match set.load(i, 8) {
            Ok(s) => ok.push(s),
            Err(r) => bad.push((set.name(i).to_string(), r)),
        }
    }
    (ok, bad)
}

#[test]
fn folder_pairs_skips_and_counts() {
    let d = tempfile::tempdir().unwrap();
    let sub = d.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    png(&d.path().join("a.png"), 10);
    std::fs::write(d.path().join("a.txt"), "red square\n").unwrap();
    png(&sub.join("b.png"), 20);
    std::fs::write(sub.join("b.txt"), "nested").unwrap();
    png(&d.path().join("lonely.png"), 30);
    std::fs::write(d.path().join("orphan.txt"), "no image").unwrap();
    std::fs::write(d.path().join("broken.png"), b"garbage").unwrap();
    std::fs::write(d.path().join("broken.txt"), "broken").unwrap();
    png(&d.path().join("latin1.png"), 40);
    std::fs::write(d.path().join("latin1.txt"), b"caf\xe9").unwrap();
    png(&d.path().join("empty.png"), 50);
    std::fs::write(d.path().join("empty.txt"), " \n").unwrap();
    let set = SampleSet::scan(&[Source::Folder(d.path().to_path_buf())]).unwrap();
    // Listing reads no caption and decodes nothing: the bad ones are found on loading.
    assert_eq!(set.len(), 5);
    let kinds: Vec<&SkipReason> = set.scan_skips().iter().map(|s| &s.reason).collect();
    assert_eq!(kinds, [&SkipReason::NoCaption, &SkipReason::NoImage]);
    let (ok, bad) = load_all(&set);
    let caps: Vec<&str> = ok.iter().map(|s| s.captions[0].as_str()).collect();
    assert_eq!(caps, ["red square", "nested"]);
    let why: Vec<String> = bad.iter().map(|(n, r)| format!("{n}: {r}")).collect();
    assert_eq!(why.len(), 3, "{why:?}");
    assert!(why[0].contains("broken.png") && why[0].contains("unreadable image"));
    assert!(why[1].contains("empty.png") && why[1].contains("empty caption"));
    assert!(why[2].contains("latin1.png") && why[2].contains("UTF-8"));
    assert_eq!(ok[0].image.dimensions(), (8, 6));
}

#[test]
fn csv_jsonl_and_tar_sources() {
    let d = tempfile::tempdir().unwrap();
    png(&d.path().join("x.png"), 1);
    png(&d.path().join("y.png"), 2);
    std::fs::write(
        d.path().join("m.tsv"),
        "filepath\ttitle\nx.png\ta cat\ny.png\ta dog\n",
    )
    .unwrap();
    std::fs::write(
        d.path().join("m.csv"),
        "img,text\nx.png,\"a cat, sitting\"\n",
    )
    .unwrap();
    std::fs::write(
        d.path().join("m.jsonl"),
        "{\"image\": \"x.png\", \"caption\": \"c1\"}\n{\"image\": \"y.png\", \"captions\": [\"c2\", \"c3\"]}\n",
    )
    .unwrap();
    let mut builder = tar::Builder::new(std::fs::File::create(d.path().join("s.tar")).unwrap());
    builder
        .append_path_with_name(d.path().join("x.png"), "k1.png")
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_cksum();
    builder
        .append_data(&mut h, "k1.txt", &b"shard"[..])
        .unwrap();
    builder.into_inner().unwrap().flush().unwrap();
    let opts = CsvOptions::default();
    let src = |n: &str| Source::from_path(&d.path().join(n), &opts).unwrap();
    let first = |set: &SampleSet, i: usize| set.load(i, 8).unwrap().captions;
    let tsv = SampleSet::scan(&[src("m.tsv")]).unwrap();
    assert_eq!(first(&tsv, 1), ["a dog"]);
    let csv = Source::Csv(
        d.path().join("m.csv"),
        CsvOptions {
            separator: b',',
            img_key: "img".into(),
            caption_key: "text".into(),
        },
    );
    assert_eq!(
        first(&SampleSet::scan(&[csv]).unwrap(), 0),
        ["a cat, sitting"]
    );
    let js = SampleSet::scan(&[src("m.jsonl")]).unwrap();
    assert_eq!(first(&js, 1), ["c2", "c3"]);
    let tar = SampleSet::scan(&[src("s.tar")]).unwrap();
    assert_eq!(first(&tar, 0), ["shard"]);
    assert_eq!(tar.load(0, 8).unwrap().image.dimensions(), (8, 6));
    let both = SampleSet::scan(&[src("m.tsv"), src("s.tar")]).unwrap();
    assert_eq!(both.len(), 3);
    assert_eq!(both.shard_ranges().len(), 1);
    assert_eq!(both.shard_ranges()[0], 2..3);
}

#[test]
fn image_only_listing_keeps_uncaptioned_images() {
    let d = tempfile::tempdir().unwrap();
    png(&d.path().join("a.png"), 10);
    std::fs::write(d.path().join("a.txt"), "captioned").unwrap();
    png(&d.path().join("b.png"), 20);
    std::fs::write(d.path().join("broken.png"), b"garbage").unwrap();
    let set = SampleSet::scan_images(&[Source::Folder(d.path().to_path_buf())]).unwrap();
    let (ok, bad) = load_all(&set);
    assert_eq!(ok.len(), 2);
    assert!(ok[1].captions.is_empty());
    assert_eq!(bad.len(), 1);
    std::fs::write(
        d.path().join("l.tsv"),
        "filepath\tlabel\na.png\t3\nb.png\t4\n",
    )
    .unwrap();
    let src = Source::from_path(&d.path().join("l.tsv"), &CsvOptions::default()).unwrap();
    assert_eq!(
        SampleSet::scan_images(std::slice::from_ref(&src))
            .unwrap()
            .len(),
        2
    );
    let err = SampleSet::scan(&[src]).unwrap_err().to_string();
    assert!(err.contains("`title`"), "{err}");
}

#[test]
fn bad_manifests_and_empty_data_are_named() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("m.tsv"), "path\tcaption\nx.png\thi\n").unwrap();
    let err =
        SampleSet::scan(&[
            Source::from_path(&d.path().join("m.tsv"), &CsvOptions::default()).unwrap(),
        ])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("m.tsv") && err.contains("`filepath`") && err.contains("path, caption"),
        "{err}"
    );
    std::fs::write(d.path().join("m.jsonl"), "{\"image\": \"x.png\"}\n").unwrap();
    let err = SampleSet::scan(&[Source::Jsonl(d.path().join("m.jsonl"))])
        .unwrap_err()
        .to_string();
    assert!(err.contains("m.jsonl:1"), "{err}");
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("a.txt"), "caption only").unwrap();
    let err = SampleSet::scan(&[Source::Folder(empty.path().to_path_buf())])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no usable") && err.contains("captions without an image"),
        "{err}"
    );
    let err = Source::from_path(&d.path().join("missing"), &CsvOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing"), "{err}");
}

/// A shard with `n` PNG + caption members, optionally cut `cut` bytes short.
fn shard(path: &Path, n: usize, extra: &[(&str, &[u8])]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut png_bytes = Vec::new();
    RgbImage::from_pixel(8, 6, image::Rgb([9, 9, 9]))
        .write_to(
            &mut std::io::Cursor::new(&mut png_bytes),
            image::ImageFormat::Png,
        )
        .unwrap();
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data).unwrap();
    };
    for k in 0..n {
        add(&format!("{k:05}.png"), &png_bytes);
        add(&format!("{k:05}.txt"), format!("caption {k}").as_bytes());
        add(&format!("{k:05}.json"), b"{}");
    }
    for (name, data) in extra {
        add(name, data);
    }
    b.into_inner().unwrap().flush().unwrap();
}

#[test]
fn damaged_shards_keep_what_precedes_the_damage() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("a.tar");
    shard(
        &p,
        3,
        &[
            ("00003.png", b"not a png"),
            ("00003.txt", b"corrupt"),
            ("00004.png", b"x"),
        ],
    );
    let set = SampleSet::scan(&[Source::Tar(p.clone())]).unwrap();
    assert_eq!(set.len(), 4);
    assert_eq!(set.scan_skips().len(), 1, "{:?}", set.scan_skips());
    assert_eq!(set.scan_skips()[0].reason, SkipReason::NoCaption);
    let (ok, bad) = load_all(&set);
    assert_eq!(ok.len(), 3);
    assert!(matches!(bad[0].1, SkipReason::Image(_)), "{bad:?}");
    // Cut the shard in the middle of its second image.
    let bytes = std::fs::read(&p).unwrap();
    let cut = d.path().join("cut.tar");
    std::fs::write(&cut, &bytes[..512 * 7 + 10]).unwrap();
    let set = SampleSet::scan(&[Source::Tar(cut)]).unwrap();
    assert_eq!(set.len(), 1);
    assert!(
        matches!(&set.scan_skips()[0].reason, SkipReason::Shard(w) if w.contains("cut off")),
        "{:?}",
        set.scan_skips()
    );
    assert_eq!(load_all(&set).0.len(), 1);
}

/// Runs `f` on another thread; a hang is a failure, not a stuck test run.
#[cfg(unix)]
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(f()));
    rx.recv_timeout(std::time::Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what} hung"))
}

#[cfg(unix)]
fn mkfifo(p: &Path) {
    let ok = std::process::Command::new("mkfifo")
        .arg(p)
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Only regular files are samples: a link to /dev/zero, a FIFO, a link to a folder are
/// skipped with what they are, never read forever or waited on.
#[cfg(unix)]
#[test]
fn only_regular_files_are_read() {
    use std::os::unix::fs::symlink;
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    png(&p("good.png"), 1);
    symlink("/dev/zero", p("zero.png")).unwrap();
    mkfifo(&p("fifo.png"));
    std::fs::create_dir(p("folder")).unwrap();
    symlink(p("folder"), p("linked.png")).unwrap();
    // A folder named like an image is walked, not read: its caption has no image.
    std::fs::create_dir(p("dir.png")).unwrap();
    png(&p("capzero.png"), 2);
    symlink("/dev/zero", p("capzero.txt")).unwrap();
    png(&p("capfifo.png"), 3);
    mkfifo(&p("capfifo.txt"));
    for n in ["good", "zero", "fifo", "linked", "dir"] {
        std::fs::write(p(&format!("{n}.txt")), format!("{n} caption")).unwrap();
    }
    let set = SampleSet::scan(&[Source::Folder(d.path().to_path_buf())]).unwrap();
    let names: Vec<&SkipReason> = set.scan_skips().iter().map(|s| &s.reason).collect();
    assert_eq!(names, [&SkipReason::NoImage], "{:?}", set.scan_skips());
    let (ok, bad) = within("loading", move || load_all(&set));
    assert_eq!(ok.len(), 1);
    assert_eq!(ok[0].captions, ["good caption"]);
    let why: Vec<String> = bad.iter().map(|(n, r)| format!("{n}: {r}")).collect();
    let expect = [
        ("capfifo.png", "bad caption", "a FIFO"),
        ("capzero.png", "bad caption", "a character device"),
        ("fifo.png", "unreadable image", "a FIFO"),
        ("linked.png", "unreadable image", "a directory"),
        ("zero.png", "unreadable image", "a character device"),
    ];
    assert_eq!(why.len(), expect.len(), "{why:?}");
    for (w, (name, kind, what)) in why.iter().zip(expect) {
        assert!(
            w.contains(name) && w.contains(kind) && w.contains(what),
            "{w} should name {name}, {kind}, {what}"
        );
    }
}

/// Manifests and shards named on the command line must be regular files too.
#[cfg(unix)]
#[test]
fn sources_must_be_regular_files() {
    let d = tempfile::tempdir().unwrap();
    mkfifo(&d.path().join("m.jsonl"));
    std::os::unix::fs::symlink("/dev/zero", d.path().join("s.tar")).unwrap();
    let opts = CsvOptions::default();
    for (name, what) in [("m.jsonl", "a FIFO"), ("s.tar", "a character device")] {
        let path = d.path().join(name);
        let err = within("from_path", {
            let opts = opts.clone();
            move || Source::from_path(&path, &opts).map(|_| ()).unwrap_err()
        });
        let msg = format!("{err}: {}", std::error::Error::source(&err).unwrap());
        assert!(msg.contains(name) && msg.contains(what), "{msg}");
    }
    // Even past that check (a file swapped afterwards), scanning opens without blocking.
    let path = d.path().join("m.jsonl");
    let err = within("scan", move || {
        SampleSet::scan(&[Source::Jsonl(path)]).unwrap_err()
    });
    let msg = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(msg.contains("a FIFO"), "{msg}");
}

/// Captions over 64 KiB (a file, a tar member, a manifest field) and images over 64 MiB
/// are skipped with the cap named, without being read; an over-long JSONL line is a
/// listed skip with its line number and the lines around it are used.
#[test]
fn oversized_captions_images_and_lines_are_skipped() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    let long = "w".repeat(MAX_CAPTION_BYTES as usize + 1);
    png(&p("a.png"), 1);
    std::fs::write(p("a.txt"), &long).unwrap();
    png(&p("b.png"), 2);
    std::fs::write(p("b.txt"), "fits").unwrap();
    let set = SampleSet::scan(&[Source::Folder(d.path().to_path_buf())]).unwrap();
    let (ok, bad) = load_all(&set);
    assert_eq!((ok.len(), bad.len()), (1, 1));
    assert!(
        matches!(&bad[0].1, SkipReason::Caption(w) if w.contains("65537 bytes is over the 64 KiB cap")),
        "{bad:?}"
    );

    let huge_line = format!(
        "{{\"image\": \"a.png\", \"caption\": \"{}\"}}",
        "x".repeat(MAX_RECORD_BYTES as usize)
    );
    let jsonl = format!(
        "{{\"image\": \"a.png\", \"caption\": \"ok\"}}\n{huge_line}\n\
         {{\"image\": \"b.png\", \"caption\": \"{long}\"}}\n\
         {{\"image\": \"b.png\", \"caption\": \"ok too\"}}\n"
    );
    std::fs::write(p("m.jsonl"), jsonl).unwrap();
    let set = SampleSet::scan(&[Source::Jsonl(p("m.jsonl"))]).unwrap();
    assert_eq!(set.len(), 3);
    let skips = set.scan_skips();
    assert_eq!(skips.len(), 1, "{skips:?}");
    assert!(skips[0].name.ends_with("m.jsonl:2"), "{skips:?}");
    assert!(
        skips[0].reason.to_string().contains("over the 1 MiB cap"),
        "{skips:?}"
    );
    let (ok, bad) = load_all(&set);
    assert_eq!(ok.len(), 2);
    assert!(
        matches!(&bad[0].1, SkipReason::Caption(w) if w.contains("cap")),
        "{bad:?}"
    );

    // A CSV record over the cap stops the scan with an error naming the file.
    let huge_field = "x".repeat(MAX_RECORD_BYTES as usize + 1);
    std::fs::write(p("m.csv"), format!("filepath,title\na.png,{huge_field}\n")).unwrap();
    let csv = Source::Csv(
        p("m.csv"),
        CsvOptions {
            separator: b',',
            ..CsvOptions::default()
        },
    );
    let Err(err) = SampleSet::scan(&[csv]) else {
        panic!("an over-long CSV record was accepted");
    };
    let err = err.to_string();
    assert!(
        err.contains("m.csv:2") && err.contains("1 MiB cap"),
        "{err}"
    );

    // A shard whose image member claims 64 MiB + 1 (sparse, so nothing is written) and
    // whose caption is over its cap.
    let tar_path = p("s.tar");
    shard(
        &tar_path,
        1,
        &[
            ("00001.png", b"x"),
            ("00001.txt", long.as_bytes()),
            ("00002.txt", b"big"),
        ],
    );
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&tar_path)
        .unwrap();
    // Over the end-of-archive blocks: one more header, its data a hole.
    let end = f.metadata().unwrap().len() - 1024;
    let mut h = tar::Header::new_gnu();
    h.set_path("00002.png").unwrap();
    h.set_size(MAX_IMAGE_BYTES + 1);
    h.set_mode(0o644);
    h.set_cksum();
    f.seek(SeekFrom::Start(end)).unwrap();
    f.write_all(h.as_bytes()).unwrap();
    let data_end = (end + 512 + MAX_IMAGE_BYTES + 1).next_multiple_of(512);
    f.set_len(data_end + 1024).unwrap();
    let set = SampleSet::scan(&[Source::Tar(tar_path)]).unwrap();
    assert_eq!(set.len(), 3, "{:?}", set.scan_skips());
    let (ok, bad) = load_all(&set);
    assert_eq!(ok.len(), 1);
    let why: Vec<String> = bad.iter().map(|(n, r)| format!("{n}: {r}")).collect();
    assert_eq!(why.len(), 2, "{why:?}");
    assert!(
        why[0].contains(":00001")
            && why[0].contains("bad caption")
            && why[0].contains("64 KiB cap"),
        "{why:?}"
    );
    assert!(
        why[1].contains(":00002")
            && why[1].contains("unreadable image")
            && why[1].contains("over the 64 MiB cap"),
        "{why:?}"
    );
}

#[test]
fn shard_folders_and_patterns_expand() {
    let d = tempfile::tempdir().unwrap();
    for i in 0..3 {
        shard(&d.path().join(format!("{i:05}.tar")), 2, &[]);
    }
    std::fs::write(d.path().join("00000_stats.json"), b"{}").unwrap();
    let opts = CsvOptions::default();
    let folder = Source::expand(d.path(), &opts).unwrap();
    assert_eq!(folder.len(), 3);
    assert!(matches!(&folder[2], Source::Tar(p) if p.ends_with("00002.tar")));
    let braces = format!("{}/{{00000..00001}}.tar", d.path().display());
    assert_eq!(Source::expand(Path::new(&braces), &opts).unwrap().len(), 2);
    let set = SampleSet::scan(&folder).unwrap();
    assert_eq!(set.len(), 6);
    assert_eq!(set.shard_ranges(), [0..2, 2..4, 4..6]);
    assert_eq!(
        set.name(3),
        format!("{}:00001", d.path().join("00001.tar").display())
    );
}
