//! The generator's tests: determinism, captions that name what is drawn, JPEG fidelity, and
//! the on-disk layouts.

use std::fs;
use std::io;

use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_xoshiro::SplitMix64;

use crate::scene::{Ground, Scene, Shape, COLOURS};
use crate::*;

fn small(seed: u64) -> SynthConfig {
    SynthConfig {
        width: 64,
        height: 48,
        seed,
        jpeg_quality: 85,
    }
}

#[test]
fn same_index_same_sample() {
    let cfg = small(3);
    for i in [0, 1, 17, 123_456_789] {
        assert_eq!(render(i, &cfg), render(i, &cfg));
    }
    let (img, _) = render(5, &cfg);
    assert_eq!(img.dimensions(), (64, 48));
    // The per-thread canvas and planes are reused: a render of another size in between
    // changes nothing.
    let other = SynthConfig {
        width: 90,
        height: 70,
        ..cfg.clone()
    };
    let (big, _) = render(5, &other);
    encode_jpeg(&big, 85).unwrap();
    assert_eq!(render(5, &cfg).0, img);
    assert_eq!(
        encode_jpeg(&img, 85).unwrap(),
        encode_jpeg(&img, 85).unwrap()
    );
}

#[test]
fn different_indices_and_seeds_differ() {
    let cfg = small(0);
    let samples: Vec<_> = (0..40).map(|i| render(i, &cfg)).collect();
    for i in 0..samples.len() {
        for j in i + 1..samples.len() {
            assert_ne!(samples[i].0, samples[j].0, "images {i} and {j}");
        }
    }
    let captions: std::collections::HashSet<_> = samples.iter().map(|s| &s.1).collect();
    assert!(
        captions.len() >= 36,
        "{} distinct captions of 40",
        captions.len()
    );
    assert_ne!(render(0, &small(1)).0, samples[0].0);
}

#[test]
fn caption_names_what_is_drawn() {
    let cfg = SynthConfig {
        width: 160,
        height: 120,
        ..small(9)
    };
    let mut seen_shapes = std::collections::HashSet::new();
    let mut seen_grounds = std::collections::HashSet::new();
    let mut seen_times = std::collections::HashSet::new();
    for i in 0..200 {
        let scene = Scene::new(i, &cfg);
        let (img, caption) = render(i, &cfg);
        assert_eq!(caption, scene.caption);
        assert!((1..=3).contains(&scene.objects.len()));
        seen_grounds.insert(format!("{:?}", scene.ground));
        seen_times.insert(format!("{:?}", scene.time));
        for o in &scene.objects {
            seen_shapes.insert(format!("{:?}", o.shape));
            let name = COLOURS[o.colour].0;
            assert!(
                caption.contains(name),
                "{i}: {name} missing from {caption:?}"
            );
            let nouns: &[&str] = match o.shape {
                Shape::Ball => &["ball", "sphere"],
                Shape::Box => &["box", "cube"],
                Shape::Tent => &["tent"],
                Shape::Flag => &["flag"],
                Shape::Ring => &["ring"],
            };
            assert!(
                nouns.iter().any(|n| caption.contains(n)),
                "{i}: {caption:?}"
            );
        }
        let word = match scene.ground {
            Ground::Grass => ["gras", "meadow"],
            Ground::Sand => ["sand", "beach"],
            Ground::Snow => ["snow", "snow"],
            Ground::Water => ["water", "lake"],
            Ground::Road => ["road", "road"],
        };
        assert!(
            word.iter().any(|w| caption.contains(w)) || caption.contains("sea"),
            "{i}: {caption:?}"
        );
        // The frontmost object is painted in its named colour: some pixels of its box lie
        // close to the palette colour under the scene's light.
        let o = scene.objects.last().unwrap();
        let target = (COLOURS[o.colour].1 * scene.light).0;
        let (x0, x1) = (
            (o.cx - o.size * 0.5).max(0.0) as u32,
            (o.cx + o.size * 0.5) as u32,
        );
        let (y0, y1) = ((o.base - o.size).max(0.0) as u32, o.base as u32);
        let mut near = 0;
        for y in y0..y1.min(img.height()) {
            for x in x0..x1.min(img.width()) {
                let p = img.get_pixel(x, y).0;
                let d = (0..3)
                    .map(|c| (f32::from(p[c]) - target[c]).abs())
                    .fold(0.0, f32::max);
                near += usize::from(d < 40.0);
            }
        }
        assert!(near >= 3, "{i}: {caption:?}: {near} pixels near {target:?}");
    }
    assert_eq!(seen_shapes.len(), 5);
    assert_eq!(seen_grounds.len(), 5);
    assert_eq!(seen_times.len(), 4);
}

/// Peak signal-to-noise ratio (dB, 8-bit peak) of `b` against `a`.
fn psnr_of(a: &[f64], b: &[f64]) -> f64 {
    let se: f64 = a.iter().zip(b).map(|(u, v)| (u - v).powi(2)).sum();
    10.0 * (255.0f64 * 255.0 / (se / a.len() as f64).max(1e-9)).log10()
}

/// [`psnr_of`] over the channel values of two images.
fn psnr(a: &RgbImage, b: &RgbImage) -> f64 {
    let values =
        |img: &RgbImage| -> Vec<f64> { img.as_raw().iter().map(|&v| f64::from(v)).collect() };
    psnr_of(&values(a), &values(b))
}

#[test]
fn jpeg_decodes_close_to_the_source() {
    for (w, h) in [(64, 48), (61, 37), (1, 1), (17, 16)] {
        let cfg = SynthConfig {
            width: w,
            height: h,
            ..small(2)
        };
        let (img, _) = render(11, &cfg);
        // PSNR of the decoded `jpg` over the RGB values and over luma alone.
        let luma = |img: &RgbImage| -> Vec<f64> {
            let f = |p: &image::Rgb<u8>, c: usize| f64::from(p[c]);
            img.pixels()
                .map(|p| 0.299 * f(p, 0) + 0.587 * f(p, 1) + 0.114 * f(p, 2))
                .collect()
        };
        let decoded_psnr = |jpg: &[u8]| {
            let back = image::load_from_memory(jpg).unwrap().to_rgb8();
            assert_eq!(back.dimensions(), (w, h));
            (psnr(&img, &back), psnr_of(&luma(&img), &luma(&back)))
        };
        // The reference: the `image` crate's own encoder at the same quality. It keeps
        // full-resolution colour where ours subsamples it 4:2:0 (as photos are stored),
        // so their colour differs on small sharp-edged scenes; luma, kept whole by both,
        // must match (observed: equal to 0.1 dB). A wrong quantisation table or swapped
        // channels fails both checks.
        let mut reference = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut reference, 90)
            .encode_image(&img)
            .unwrap();
        let ((ours, ours_y), (_, theirs_y)) = (
            decoded_psnr(&encode_jpeg(&img, 90).unwrap()),
            decoded_psnr(&reference),
        );
        assert!(
            ours > 25.0 && ours_y > theirs_y - 0.5,
            "{w}×{h}: PSNR {ours:.1} dB, luma {ours_y:.1} dB vs the image crate's {theirs_y:.1} dB"
        );
    }
    let (img, _) = render(0, &small(0));
    assert!(encode_jpeg(&img, 20).unwrap().len() < encode_jpeg(&img, 95).unwrap().len());
    assert!(encode_jpeg(&RgbImage::new(0, 4), 85).is_err());
}

#[test]
fn jpeg_handles_extremes() {
    let mut rng = SplitMix64::seed_from_u64(1);
    // Grey noise: 4:2:0 keeps luma at full resolution, so at q100 it survives.
    let noise = RgbImage::from_fn(40, 24, |_, _| {
        image::Rgb([rng.random_range(0..256) as u8; 3])
    });
    let flat = |v: u8| RgbImage::from_pixel(33, 17, image::Rgb([v, v, v]));
    for (img, q, min_psnr) in [
        (noise.clone(), 100, 30.0),
        (noise, 1, 0.0),
        (flat(0), 85, 40.0),
        (flat(255), 85, 40.0),
        (flat(128), 1, 30.0),
    ] {
        let back = image::load_from_memory(&encode_jpeg(&img, q).unwrap())
            .unwrap()
            .to_rgb8();
        assert_eq!(back.dimensions(), img.dimensions());
        let psnr = psnr(&img, &back);
        assert!(psnr >= min_psnr, "q{q}: PSNR {psnr:.1} dB");
    }
}

#[test]
fn shards_hold_members_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small(4);
    let paths = write_shards(dir.path(), 7, 3, &cfg).unwrap();
    let names: Vec<_> = paths
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["00000.tar", "00001.tar", "00002.tar"]);
    let mut index = 0u64;
    for (s, path) in paths.iter().enumerate() {
        let mut archive = tar::Archive::new(fs::File::open(path).unwrap());
        let mut members = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_str().unwrap().to_string();
            let mut data = Vec::new();
            io::Read::read_to_end(&mut entry, &mut data).unwrap();
            members.push((name, data));
        }
        let n = if s < 2 { 3 } else { 1 };
        assert_eq!(members.len(), 3 * n);
        for sample in members.chunks(3) {
            let key = format!("{index:09}");
            let names: Vec<_> = sample.iter().map(|m| m.0.as_str()).collect();
            assert_eq!(
                names,
                [
                    format!("{key}.jpg"),
                    format!("{key}.json"),
                    format!("{key}.txt")
                ]
            );
            let img = image::load_from_memory(&sample[0].1).unwrap();
            assert_eq!((img.width(), img.height()), (64, 48));
            let caption = String::from_utf8(sample[2].1.clone()).unwrap();
            assert_eq!(caption, render(index, &cfg).1);
            let meta: serde_json::Value = serde_json::from_slice(&sample[1].1).unwrap();
            assert_eq!(meta["key"], key.as_str());
            assert_eq!(meta["caption"], caption.as_str());
            assert_eq!(meta["width"], 64);
            assert_eq!(meta["height"], 48);
            assert_eq!(meta["status"], "success");
            assert!(meta["url"].is_null());
            index += 1;
        }
        let stats: serde_json::Value = serde_json::from_slice(
            &fs::read(dir.path().join(format!("{s:05}_stats.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(stats["count"], n);
        assert_eq!(stats["successes"], n);
    }
    assert_eq!(index, 7);
    let mut left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    let want = [
        "00000.tar",
        "00000_stats.json",
        "00001.tar",
        "00001_stats.json",
    ];
    assert_eq!(left[..4], want, "no temporary file left");
    assert_eq!(left[4..], ["00002.tar", "00002_stats.json"]);
    // Reproducible to the byte.
    let again = tempfile::tempdir().unwrap();
    write_shards(again.path(), 7, 3, &cfg).unwrap();
    assert_eq!(
        fs::read(&paths[1]).unwrap(),
        fs::read(again.path().join("00001.tar")).unwrap()
    );
    assert!(write_shards(dir.path(), 1, 0, &cfg).is_err());
}

#[test]
fn folder_holds_pairs_in_subfolders() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small(5);
    write_folder(dir.path(), 9_998..10_002, &cfg).unwrap();
    for i in 9_998..10_002u64 {
        let sub = dir.path().join(format!("{:05}", i / 10_000));
        let jpg = fs::read(sub.join(format!("{i:09}.jpg"))).unwrap();
        let img = image::load_from_memory(&jpg).unwrap();
        assert_eq!((img.width(), img.height()), (64, 48));
        let txt = fs::read_to_string(sub.join(format!("{i:09}.txt"))).unwrap();
        assert_eq!(txt, render(i, &cfg).1);
    }
    let count = |d: &str| fs::read_dir(dir.path().join(d)).unwrap().count();
    assert_eq!((count("00000"), count("00001")), (4, 4));
    write_folder(dir.path(), 5..5, &cfg).unwrap();
}
