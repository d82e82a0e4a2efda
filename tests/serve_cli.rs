//! Black-box tests of `clip serve` over HTTP on a loopback port, against `clip search`.

mod common;

use std::io::{BufRead, BufReader, Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use base64::Engine;
use common::{clip, fixtures};
use serde_json::{json, Value};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn model() -> PathBuf {
    fixtures().join("hf_tiny")
}

/// A running `clip serve`, killed when dropped.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts the binary on a free loopback port and reads the address it prints.
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_clip"))
            .arg("serve")
            .args(args)
            .args(["--port", "0"])
            .env("RAYON_NUM_THREADS", "2")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("clip serve did not start: {line:?}"))
            .to_string();
        assert!(addr.starts_with("127.0.0.1:"), "{addr}");
        Self { child, addr }
    }

    /// POSTs `body` to `route`: the status and the JSON answer.
    fn post(&self, route: &str, body: &str) -> (u16, Value) {
        let url = format!("http://{}{route}", self.addr);
        let (status, text) = match ureq::post(&url).send_string(body) {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
            Err(e) => panic!("POST {route}: {e}"),
        };
        let doc = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!("POST {route} answered {status} with non-JSON {text:?}: {e}")
        });
        (status, doc)
    }

    /// GETs `path` exactly as written (no client-side `..` resolution): status and body.
    fn get(&self, path: &str) -> (u16, Vec<u8>) {
        self.raw(&format!("GET {path} HTTP/1.1\r\n\r\n"))
    }

    /// Sends `request` (ending in its blank line; Host and Connection are added): status, body.
    fn raw(&self, request: &str) -> (u16, Vec<u8>) {
        let mut conn = std::net::TcpStream::connect(&self.addr).unwrap();
        let (first, rest) = request.split_once("\r\n").unwrap();
        let host = &self.addr;
        write!(
            conn,
            "{first}\r\nHost: {host}\r\nConnection: close\r\n{rest}"
        )
        .unwrap();
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&raw[..split]);
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, raw[split + 4..].to_vec())
    }

    /// A request that must succeed, e.g. after a bad one: the server still answers.
    fn still_answers(&self) {
        let (status, doc) = self.post("/search", r#"{"text": "a red circle", "k": 2}"#);
        assert_eq!(status, 200, "{doc}");
        assert_eq!(doc["results"].as_array().unwrap().len(), 2);
    }
}

/// The fixture images, plus a link `zz_link.png` to an image outside the folder; an image
/// index over them and a caption index.
struct Setup {
    dir: tempfile::TempDir,
    photos: PathBuf,
    captions: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let imgs = dir.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    for e in std::fs::read_dir(fixtures().join("images")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), imgs.join(e.file_name())).unwrap();
    }
    let outside = dir.path().join("secret.png");
    std::fs::copy(fixtures().join("images/img00.png"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, imgs.join("zz_link.png")).unwrap();
    let photos = dir.path().join("photos");
    let captions = dir.path().join("caps");
    let model = model();
    for (what, src, out) in [
        ("--images", imgs, &photos),
        ("--texts", fixtures().join("captions.txt"), &captions),
    ] {
        let args = ["index", "build", "--model", s(&model), what, s(&src)];
        common::ok(&clip(&[&args[..], &["--out", s(out)]].concat()));
    }
    Setup {
        dir,
        photos,
        captions,
    }
}

/// `clip search --json` hits of one query: (ids, scores).
fn cli_hits(args: &[&str]) -> (Vec<u64>, Vec<f64>) {
    let out = common::ok(&clip(&[&["search", "--json"], args].concat()));
    let doc: Value = serde_json::from_str(&out).unwrap();
    let hits = doc[0]["hits"].as_array().unwrap();
    (
        hits.iter().map(|h| h["id"].as_u64().unwrap()).collect(),
        hits.iter().map(|h| h["score"].as_f64().unwrap()).collect(),
    )
}

/// Ids and scores of a `/search` answer, or of `/knn-service`'s list (`similarity`).
fn http_hits(results: &Value, score: &str) -> (Vec<u64>, Vec<f64>) {
    let r = results.as_array().unwrap();
    (
        r.iter().map(|h| h["id"].as_u64().unwrap()).collect(),
        r.iter().map(|h| h[score].as_f64().unwrap()).collect(),
    )
}

/// Same ids and the same scores: a lone query goes through the same code as in `clip search`.
fn assert_same(http: (Vec<u64>, Vec<f64>), cli: (Vec<u64>, Vec<f64>)) {
    assert_eq!(http.0, cli.0, "ids differ from clip search");
    assert_eq!(http.1, cli.1, "scores differ from clip search");
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn queries_match_clip_search_and_clip_retrieval_shapes() {
    let st = setup();
    let photos = format!("photos={}", s(&st.photos));
    let srv = Server::start(&["--index", &photos, "--index", s(&st.captions)]);
    let url = format!("http://{}/indices-list", srv.addr);
    let r = ureq::get(&url).call().unwrap();
    assert_eq!(
        r.header("access-control-allow-origin"),
        None,
        "CORS only when asked"
    );

    // Text → image, default index.
    let (status, doc) = srv.post("/search", r#"{"text": "a photo of a cat", "k": 5}"#);
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["index"], "photos");
    let cli = cli_hits(&["--index", s(&st.photos), "a photo of a cat", "-k", "5"]);
    assert_same(http_hits(&doc["results"], "score"), cli);
    let first = &doc["results"][0];
    assert!(first["path"]
        .as_str()
        .unwrap()
        .starts_with(s(&st.dir.path().canonicalize().unwrap())));

    // Image → image, and image → text over the caption index (named after its folder).
    let img = fixtures().join("images/img04.jpg");
    let body = json!({ "image": b64(&std::fs::read(&img).unwrap()), "k": 4 }).to_string();
    let (status, doc) = srv.post("/search", &body);
    assert_eq!(status, 200, "{doc}");
    let cli = cli_hits(&["--index", s(&st.photos), "--image", s(&img), "-k", "4"]);
    assert_same(http_hits(&doc["results"], "score"), cli);
    let data_url = format!(
        "data:image/jpeg;base64,{}",
        b64(&std::fs::read(&img).unwrap())
    );
    let body = json!({ "image": data_url, "k": 3, "index": "caps" }).to_string();
    let (status, doc) = srv.post("/search", &body);
    assert_eq!(status, 200, "{doc}");
    assert!(doc["results"][0]["caption"].is_string(), "{doc}");
    let cli = cli_hits(&["--index", s(&st.captions), "--image", s(&img), "-k", "3"]);
    assert_same(http_hits(&doc["results"], "score"), cli);

    // A precomputed vector (not unit length: both sides normalise it).
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(st.photos.join("manifest.json")).unwrap()).unwrap();
    let dim = manifest["dimension"].as_u64().unwrap() as usize;
    let v: Vec<f32> = (0..dim).map(|i| (i as f32 * 0.7).sin() * 3.0).collect();
    let q = st.dir.path().join("q.safetensors");
    let data: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, dim], &data).unwrap();
    safetensors::serialize_to_file([("embeddings", view)], None, &q).unwrap();
    let (status, doc) = srv.post("/search", &json!({ "embedding": v, "k": 6 }).to_string());
    assert_eq!(status, 200, "{doc}");
    let cli = cli_hits(&[
        "--index",
        s(&st.photos),
        "--query-embeddings",
        s(&q),
        "-k",
        "6",
    ]);
    assert_same(http_hits(&doc["results"], "score"), cli);

    // clip-retrieval: the list clip-front reads, the index names, metadata by id.
    let (status, names) = srv.post("/indices-list", "");
    assert_eq!(status, 405, "{names}");
    let (status, body) = srv.get("/indices-list");
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap(),
        json!(["photos", "caps"])
    );
    let knn = json!({
        "text": "a photo of a cat", "image": null, "image_url": null, "embedding_input": null,
        "modality": "image", "num_images": 3, "num_result_ids": 5, "indice_name": "photos",
        "use_mclip": false, "deduplicate": true, "use_safety_model": false,
        "use_violence_detector": false, "aesthetic_score": "", "aesthetic_weight": ""
    });
    let (status, doc) = srv.post("/knn-service", &knn.to_string());
    assert_eq!(status, 200, "{doc}");
    let cli = cli_hits(&["--index", s(&st.photos), "a photo of a cat", "-k", "5"]);
    assert_same(http_hits(&doc, "similarity"), cli);
    let list = doc.as_array().unwrap();
    assert!(list[..3].iter().all(|h| h["url"].is_string()), "{doc}");
    assert!(list[3..].iter().all(|h| h.get("url").is_none()), "{doc}");
    let url = list[0]["url"].as_str().unwrap();
    let route = url.strip_prefix(&format!("http://{}", srv.addr)).unwrap();
    let (status, bytes) = srv.get(route);
    assert_eq!(status, 200);
    let id = list[0]["id"].as_u64().unwrap() as usize;
    let path = list[0]["path"].as_str().unwrap();
    assert_eq!(bytes, std::fs::read(path).unwrap(), "entry {id}");
    let ids = json!({ "ids": [list[4]["id"], 999], "indice_name": "photos" });
    let (status, doc) = srv.post("/metadata", &ids.to_string());
    assert_eq!(status, 200, "{doc}");
    assert_eq!(
        doc.as_array().unwrap().len(),
        1,
        "unknown ids are left out: {doc}"
    );
    assert_eq!(doc[0]["id"], list[4]["id"]);
    assert!(doc[0]["metadata"]["url"].is_string(), "{doc}");

    // The page.
    let (status, page) = srv.get("/");
    assert_eq!(status, 200);
    let page = String::from_utf8(page).unwrap();
    assert!(page.contains("<html") && page.contains("search"), "{page}");

    // Simultaneous queries all answered, each as alone.
    let texts = [
        "a red circle",
        "a blue square",
        "a photo of a dog",
        "a green line",
    ];
    let alone: Vec<Value> = texts
        .iter()
        .map(|t| {
            srv.post("/search", &json!({ "text": t, "k": 3 }).to_string())
                .1
        })
        .collect();
    std::thread::scope(|sc| {
        let runs: Vec<_> = (0..16)
            .map(|i| {
                let body = json!({ "text": texts[i % 4], "k": 3 }).to_string();
                let srv = &srv;
                (i, sc.spawn(move || srv.post("/search", &body)))
            })
            .collect();
        for (i, h) in runs {
            let (status, doc) = h.join().unwrap();
            assert_eq!(status, 200, "{doc}");
            let ids = |d: &Value| http_hits(&d["results"], "score").0;
            assert_eq!(ids(&doc), ids(&alone[i % 4]), "{}", texts[i % 4]);
        }
    });
}

#[test]
fn bad_requests_get_a_4xx_naming_the_problem_and_the_server_keeps_serving() {
    let st = setup();
    let front = "http://front.example";
    let srv = Server::start(&["--index", s(&st.photos), "--allow-origin", front]);
    srv.still_answers();
    // Errors too carry the CORS header, so a page elsewhere can read what went wrong.
    let url = format!("http://{}/search", srv.addr);
    let Err(ureq::Error::Status(400, r)) = ureq::post(&url).send_string("{") else {
        panic!("a malformed body was accepted");
    };
    assert_eq!(r.header("access-control-allow-origin"), Some(front));
    let long = "a".repeat(100 * 1024);
    let not_an_image = b64(b"GIF89a? not really an image at all");
    // 56 megapixels of zeros: 60 KB as a PNG, refused from its header before decoding.
    let mut bomb = Vec::new();
    image::GrayImage::new(8000, 7000)
        .write_to(&mut Cursor::new(&mut bomb), image::ImageFormat::Png)
        .unwrap();
    let bomb = b64(&bomb);
    let cases: Vec<(String, u16, &str)> = vec![
        (r#"{"text": "a cat", "k": 3"#.into(), 400, "JSON"),
        ("not json at all".into(), 400, "JSON"),
        (r#"{"text": "a cat", "q": 1}"#.into(), 400, "unknown field"),
        (
            json!({ "image": not_an_image }).to_string(),
            400,
            "does not decode",
        ),
        (json!({ "image": bomb }).to_string(), 413, "pixels"),
        (r#"{"image": "%%%not base64%%%"}"#.into(), 400, "base64"),
        (r#"{"image": ""}"#.into(), 400, "empty image"),
        (r#"{"text": ""}"#.into(), 400, "empty query"),
        (r#"{"text": "   "}"#.into(), 400, "empty query"),
        (r#"{}"#.into(), 400, "exactly one of"),
        (
            r#"{"text": "a cat", "embedding": [1.0]}"#.into(),
            400,
            "exactly one of",
        ),
        (json!({ "text": long }).to_string(), 413, "102400 bytes"),
        (r#"{"text": "a cat", "k": 0}"#.into(), 400, "at least 1"),
        (r#"{"text": "a cat", "k": 1000000000}"#.into(), 400, "limit"),
        (r#"{"text": "a cat", "k": -1}"#.into(), 400, "JSON"),
        (r#"{"embedding": [1.0, 2.0]}"#.into(), 400, "dimension"),
        (
            r#"{"text": "a cat", "index": "nope"}"#.into(),
            404,
            "\"nope\"",
        ),
    ];
    for (body, want, says) in &cases {
        let (status, doc) = srv.post("/search", body);
        let shown = &body[..body.len().min(60)];
        assert_eq!(status, *want, "{shown}: {doc}");
        let msg = doc["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{shown}: {doc}"));
        assert!(msg.contains(says), "{shown}: {msg:?} should say {says:?}");
        srv.still_answers();
    }
    // A client that stalls mid-body holds up only itself.
    let mut slow = std::net::TcpStream::connect(&srv.addr).unwrap();
    write!(
        slow,
        "POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{\"text\":"
    )
    .unwrap();
    srv.still_answers();
    drop(slow);
    // A body declared too large is refused before it is read.
    let (status, body) = srv.raw("POST /search HTTP/1.1\r\nContent-Length: 17825792\r\n\r\n");
    assert_eq!(status, 413, "{}", String::from_utf8_lossy(&body));
    srv.still_answers();
    let knn_cases = [
        (
            json!({ "text": "", "modality": "image", "num_images": 3 }),
            "empty query",
        ),
        (json!({ "text": "a cat", "num_images": 0 }), "at least 1"),
        (
            json!({ "text": "a cat", "num_images": 1_000_000_000u64 }),
            "limit",
        ),
        (
            json!({ "image_url": "http://example.com/a.png", "num_images": 3 }),
            "image_url",
        ),
        (json!({ "text": "a cat", "modality": "audio" }), "modality"),
    ];
    for (body, says) in &knn_cases {
        let (status, doc) = srv.post("/knn-service", &body.to_string());
        assert_eq!(status, 400, "{body}: {doc}");
        assert!(
            doc["error"].as_str().unwrap().contains(says),
            "{body}: {doc}"
        );
    }
    let (status, doc) = srv.post("/knn-service", r#"{"text": "a", "indice_name": "x"}"#);
    assert_eq!(status, 404, "{doc}");

    // Files: only indexed entries, only under the indexed folder. The link to an image
    // outside was indexed (as `clip index build` does) but its file is not served.
    let link_id = 12;
    let (status, body) = srv.get(&format!("/image/photos/{link_id}"));
    assert_eq!(status, 403, "{}", String::from_utf8_lossy(&body));
    let (status, _) = srv.get("/image/photos/0");
    assert_eq!(status, 200);
    for path in [
        "/image/photos/../../etc/passwd",
        "/image/photos/..%2F..%2Fetc%2Fpasswd",
        "/image/photos/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/image/..%2F..%2Fetc/passwd",
        "/image/photos/0/../../../../etc/passwd",
        "/image/photos/0%2F..%2F..%2Fetc%2Fpasswd",
        "/image/photos/-1",
        "/image/photos/13",
        "/../../etc/passwd",
        "/image/photos/%ff",
    ] {
        let (status, body) = srv.get(path);
        assert!((400..500).contains(&status), "{path}: {status}");
        let doc: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| panic!("{path}: {}", String::from_utf8_lossy(&body)));
        assert!(doc["error"].is_string(), "{path}: {doc}");
        srv.still_answers();
    }
}

#[test]
fn serve_refuses_what_it_cannot_serve() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let o = clip(&["serve", "--index", s(&missing), "--port", "0"]);
    let err = common::fail(&o);
    assert!(err.contains("missing"), "{err}");
    let o = clip(&["serve", "--index", "bad name=/tmp", "--port", "0"]);
    let err = common::fail(&o);
    assert!(err.contains("index name"), "{err}");
}
