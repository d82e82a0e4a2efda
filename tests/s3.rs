//! `clip index build --data s3://…` against a real S3 implementation (moto or MinIO on
//! loopback; `scripts/s3_test_server.sh test` runs it in CI), and `clip serve`'s thumbnail of
//! such an entry, a ranged GET. Skipped, with a notice, when `CLIP_TEST_S3_ENDPOINT` is unset.

mod common;

use common::*;

#[test]
fn an_index_of_s3_shards_when_a_server_is_named() {
    let Ok(endpoint) = std::env::var("CLIP_TEST_S3_ENDPOINT") else {
        eprintln!(
            "skipped: CLIP_TEST_S3_ENDPOINT is unset (scripts/s3_test_server.sh starts moto)"
        );
        return;
    };
    let bucket = format!("clip-index-{}", std::process::id());
    let put = |path: &str, body: &[u8]| {
        ureq::put(&format!("{endpoint}/{bucket}{path}"))
            .send_bytes(body)
            .unwrap_or_else(|e| panic!("PUT {path} to {endpoint}: {e}"));
    };
    put("", b"");
    for k in 0..2 {
        put(&format!("/s/{k}.tar"), &emoji_shard(10 * k, 10));
    }
    let tmp = tempfile::tempdir().unwrap();
    let idx = tmp.path().join("idx");
    let data = format!("s3://{bucket}/s/{{0..1}}.tar::s3://{bucket}/s/gone.tar");
    let model = fixture("hf_tiny");
    let err = ok_stderr(&clip(&[
        "index",
        "build",
        "--model",
        &model,
        "--data",
        &data,
        "--data-endpoint",
        &endpoint,
        "--out",
        s(&idx),
    ]));
    assert!(
        err.contains("indexed 20 samples") && err.contains("gone.tar"),
        "{err}"
    );

    let server = serve(&idx);
    let url = format!("{}/search", server.1);
    let r = ureq::post(&url)
        .send_string(r#"{"text": "a face", "k": 1}"#)
        .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
    let hit = &doc["results"][0];
    let key = hit["name"].as_str().unwrap().split('#').nth(1).unwrap();
    let thumb = format!("{}{}", server.1, hit["url"].as_str().unwrap());
    let mut got = Vec::new();
    std::io::Read::read_to_end(
        &mut ureq::get(&thumb).call().unwrap().into_reader(),
        &mut got,
    )
    .unwrap();
    let png =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("data/emoji-noto/{key}.png"));
    assert_eq!(got, std::fs::read(png).unwrap(), "{hit}");
}
