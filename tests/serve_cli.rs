//! Black-box tests of `clip serve` over HTTP on a loopback port, against `clip search`.

mod common;

use std::io::{BufRead, BufReader, Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use common::{clip, fixtures};
use serde_json::{json, Value};

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn model() -> PathBuf {
    fixtures().join("hf_tiny")
}

/// A running `clip serve`, killed when dropped; its stderr goes to a log file.
struct Server {
    child: Child,
    addr: String,
    log: tempfile::NamedTempFile,
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
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_clip"))
            .arg("serve")
            .args(args)
            .args(["--port", "0"])
            .env("RAYON_NUM_THREADS", "2")
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| {
                let err = std::fs::read_to_string(log.path()).unwrap_or_default();
                panic!("clip serve did not start: {line:?}; stderr: {err}")
            })
            .to_string();
        assert!(addr.starts_with("127.0.0.1:"), "{addr}");
        Self { child, addr, log }
    }

    /// What the server wrote to stderr so far.
    fn stderr(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap()
    }

    /// The server's peak resident memory so far, in KiB (`VmHWM`).
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
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
        let (status, _, body) = self.raw_as(&self.addr, request);
        (status, body)
    }

    /// [`Server::raw`] with the Host header `host`: status, head and body.
    fn raw_as(&self, host: &str, request: &str) -> (u16, String, Vec<u8>) {
        let mut conn = std::net::TcpStream::connect(&self.addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let (first, rest) = request.split_once("\r\n").unwrap();
        write!(
            conn,
            "{first}\r\nHost: {host}\r\nConnection: close\r\n{rest}"
        )
        .unwrap();
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, head, raw[split + 4..].to_vec())
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
    // Files are named relative to the indexed folder (absolute with --absolute-paths).
    let first = doc["results"][0]["path"].as_str().unwrap();
    assert!(
        Path::new(first).is_relative() && st.dir.path().join("imgs").join(first).is_file(),
        "{first}"
    );

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
    let file = st.dir.path().join("imgs").join(path);
    assert_eq!(bytes, std::fs::read(file).unwrap(), "entry {id}");
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

/// Base64 of a PNG of `w`×`h` 16-bit RGBA zeros: a few hundred KB that decode to 8 bytes a
/// pixel.
fn png_bomb(w: u32, h: u32) -> String {
    let img = image::ImageBuffer::<image::Rgba<u16>, Vec<u16>>::new(w, h);
    let mut png = Vec::new();
    image::DynamicImage::ImageRgba16(img)
        .write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    b64(&png)
}

/// The text of a raw answer, which must not name the server's files.
fn assert_private(body: &[u8], dir: &Path) -> String {
    let text = String::from_utf8_lossy(body).into_owned();
    let real = dir.canonicalize().unwrap();
    for p in [dir, &real] {
        assert!(!text.contains(s(p)), "names a server path: {text}");
    }
    text
}

#[test]
fn upload_bombs_are_refused_over_the_pixel_cap() {
    let st = setup();
    let srv = Server::start(&["--index", s(&st.photos)]);
    // 20 MP of 16-bit RGBA, ~0.3 MB: under the old 50 MP cap, 160 MB once decoded.
    let body = json!({ "image": png_bomb(5000, 4000), "k": 1 }).to_string();
    let (status, doc) = srv.post("/search", &body);
    assert_eq!(status, 413, "{doc}");
    let msg = doc["error"].as_str().unwrap();
    assert!(
        msg.contains("5000×4000") && msg.contains("limit is 16777216 pixels (--max-pixels)"),
        "{msg}"
    );
    srv.still_answers();
    drop(srv);
    // The cap is the flag's.
    let srv = Server::start(&["--index", s(&st.photos), "--max-pixels", "100"]);
    let img = std::fs::read(fixtures().join("images/img04.jpg")).unwrap();
    let (status, doc) = srv.post("/search", &json!({ "image": b64(&img) }).to_string());
    assert_eq!(status, 413, "{doc}");
    let msg = doc["error"].as_str().unwrap();
    assert!(msg.contains("limit is 100 pixels"), "{msg}");
}

/// CPU time (user + system ticks) the process has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after_name.split(' ').collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn bomb_uploads_whose_clients_hang_up_keep_the_server_memory_bounded() {
    let st = setup();
    let srv = Server::start(&["--index", s(&st.photos)]);
    // An image query first, so that the model's own buffers are in the baseline.
    let img = std::fs::read(fixtures().join("images/img04.jpg")).unwrap();
    let (status, doc) = srv.post(
        "/search",
        &json!({ "image": b64(&img), "k": 1 }).to_string(),
    );
    assert_eq!(status, 200, "{doc}");
    let idle = srv.peak_rss_kib();
    // 4096×4096 16-bit RGBA, under the 16 MP cap: ~200 MB at the peak of its decode.
    let body = json!({ "image": png_bomb(4096, 4096), "k": 1 }).to_string();
    let request = format!(
        "POST /search HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n{body}",
        srv.addr,
        body.len()
    );
    let start = Instant::now();
    std::thread::scope(|sc| {
        for _ in 0..24 {
            sc.spawn(|| {
                let mut c = std::net::TcpStream::connect(&srv.addr).unwrap();
                c.write_all(request.as_bytes()).unwrap();
                std::thread::sleep(Duration::from_secs(1));
            });
        }
    });
    // Until the server has finished what it started: no CPU used for a second (bounded).
    let pid = srv.child.id();
    let mut last = cpu_ticks(pid);
    for _ in 0..120 {
        std::thread::sleep(Duration::from_secs(1));
        let now = cpu_ticks(pid);
        if now == last {
            break;
        }
        last = now;
    }
    let peak = srv.peak_rss_kib();
    let grew = peak.saturating_sub(idle) / 1024;
    eprintln!(
        "24 bomb uploads: peak RSS {} MiB, idle {} MiB (+{grew} MiB), settled after {:.1} s",
        peak / 1024,
        idle / 1024,
        start.elapsed().as_secs_f64()
    );
    assert!(grew < 400, "peak RSS grew by {grew} MiB over idle");
    srv.still_answers();
}

#[test]
fn slow_clients_hold_only_their_own_connections() {
    let st = setup();
    let srv = Server::start(&["--index", s(&st.photos), "--header-timeout", "2"]);
    let addr = srv.addr.clone();
    let connect = |start: &str| {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.write_all(start.as_bytes()).unwrap();
        c
    };
    // 64 clients sending their bodies a byte at a time, 16 their headers.
    let body_start =
        format!("POST /search HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 100\r\n\r\n{{");
    let mut slow: Vec<_> = (0..64).map(|_| connect(&body_start)).collect();
    slow.extend((0..16).map(|_| connect("POST /search HTTP/1.1\r\nHo")));
    for _ in 0..10 {
        for c in &mut slow {
            let _ = c.write_all(b" ");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let t = Instant::now();
    srv.still_answers();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // A connection that never finishes its headers is closed after --header-timeout, and so
    // is an idle keep-alive connection.
    for start in [
        format!("GET / HTTP/1.1\r\nHost: {addr}\r\n"),
        format!("GET /indices-list HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    ] {
        let mut c = connect(&start);
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let t = Instant::now();
        let mut got = Vec::new();
        let end = c.read_to_end(&mut got);
        let reset = matches!(&end, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset);
        assert!(end.is_ok() || reset, "{start:?} still open: {end:?}");
        assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
        if start.ends_with("\r\n\r\n") {
            assert!(got.starts_with(b"HTTP/1.1 200"), "{start:?}");
        }
    }
    drop(slow);
    srv.still_answers();
}

#[test]
fn only_loopback_and_allowed_host_names_are_answered() {
    let st = setup();
    let photos = format!("photos={}", s(&st.photos));
    let srv = Server::start(&["--index", &photos, "--allow-host", "photos.home.arpa"]);
    let port = srv.addr.rsplit_once(':').unwrap().1;
    let knn = json!({ "text": "a photo of a cat", "num_images": 2 }).to_string();
    let post = format!(
        "POST /knn-service HTTP/1.1\r\nContent-Length: {}\r\n\r\n{knn}",
        knn.len()
    );
    for host in [
        format!("localhost:{port}"),
        "LOCALHOST".into(),
        format!("127.0.0.1:{port}"),
        "127.1.2.3".into(),
        format!("[::1]:{port}"),
        "photos.home.arpa".into(),
        "photos.home.arpa:8080".into(),
    ] {
        let (status, _, body) = srv.raw_as(&host, &post);
        let doc: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 200, "{host}: {doc}");
        let url = doc[0]["url"].as_str().unwrap();
        let want = format!("http://{host}/image/photos/");
        assert!(url.starts_with(&want), "{host}: {url}");
    }
    // A page whose name was rebound to 127.0.0.1 reads nothing, and gets no URL built from
    // its name.
    for host in [
        "evil.example",
        "evil.example:1234",
        "127.0.0.1.evil.example",
        "localhost.evil.example",
        "",
    ] {
        for req in [
            "GET /indices-list HTTP/1.1\r\n\r\n",
            "GET /image/photos/0 HTTP/1.1\r\n\r\n",
            post.as_str(),
        ] {
            let (status, _, body) = srv.raw_as(host, req);
            let text = String::from_utf8_lossy(&body);
            assert_eq!(status, 421, "{host} {req}: {text}");
            let doc: Value = serde_json::from_str(&text).unwrap();
            assert!(
                doc["error"].as_str().unwrap().contains("--allow-host"),
                "{doc}"
            );
            assert!(!text.contains("http://"), "{text}");
        }
    }
    srv.still_answers();
}

#[test]
fn files_limits_and_errors_keep_server_paths_private() {
    let st = setup();
    let photos = format!("photos={}", s(&st.photos));
    // Absolute paths only when asked; '*' as origin only with a warning.
    let args = [
        "--index",
        &photos,
        "--absolute-paths",
        "--allow-origin",
        "*",
    ];
    let srv = Server::start(&args);
    let (status, doc) = srv.post("/search", r#"{"text": "a cat", "k": 1}"#);
    assert_eq!(status, 200, "{doc}");
    let path = doc["results"][0]["path"].as_str().unwrap();
    let imgs = st.dir.path().join("imgs");
    let real = imgs.canonicalize().unwrap();
    assert!(path.starts_with(s(&real)), "{path}");
    assert!(
        srv.stderr().contains("--allow-origin '*'"),
        "{}",
        srv.stderr()
    );
    drop(srv);

    let front = "http://front.example";
    let srv = Server::start(&["--index", &photos, "--allow-origin", front]);
    let addr = srv.addr.clone();
    // nosniff on answers and on errors.
    for (route, want) in [("/indices-list", 200), ("/nope", 404)] {
        let (status, head, _) = srv.raw_as(&addr, &format!("GET {route} HTTP/1.1\r\n\r\n"));
        assert_eq!(status, want, "{route}");
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    }
    // A browser's CORS preflight for a JSON POST.
    let (status, head, _) = srv.raw_as(
        &addr,
        "OPTIONS /search HTTP/1.1\r\nOrigin: http://front.example\r\n\
         Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\n\r\n",
    );
    assert_eq!(status, 204, "{head}");
    for h in [
        "access-control-allow-origin: http://front.example",
        "access-control-allow-methods: get, post, options",
        "access-control-allow-headers: content-type",
    ] {
        assert!(head.contains(h), "{h}: {head}");
    }
    // /metadata refuses a long id list before parsing the rest of it.
    let mut ids = vec![json!(0); 10_001];
    ids.push(json!("not an id"));
    let (status, doc) = srv.post("/metadata", &json!({ "ids": ids }).to_string());
    assert_eq!(status, 400, "{doc}");
    assert!(
        doc["error"]
            .as_str()
            .unwrap()
            .contains("the limit is 10000"),
        "{doc}"
    );

    // In place of indexed images: a FIFO (never opened), a 300 MB file (over the cap), a
    // missing file. Refused with errors that name the entry, not the server's paths.
    std::fs::remove_file(imgs.join("img01.png")).unwrap();
    let made = Command::new("mkfifo").arg(imgs.join("img01.png")).status();
    assert!(made.unwrap().success());
    let big = std::fs::File::create(imgs.join("img02.png")).unwrap();
    big.set_len(300 << 20).unwrap();
    std::fs::remove_file(imgs.join("img03.png")).unwrap();
    for (id, want, says) in [
        (1, 403, "not a regular file"),
        (2, 403, "limit"),
        (3, 404, "entry 3 of index photos"),
    ] {
        let (status, _, body) =
            srv.raw_as(&addr, &format!("GET /image/photos/{id} HTTP/1.1\r\n\r\n"));
        let text = assert_private(&body, st.dir.path());
        assert_eq!(status, want, "{id}: {text}");
        assert!(text.contains(says), "{id}: {text}");
    }
    let (status, _, body) = srv.raw_as(&addr, "GET /image/photos/0 HTTP/1.1\r\n\r\n");
    assert_eq!(status, 200);
    assert_eq!(body, std::fs::read(imgs.join("img00.png")).unwrap());

    // A rows file damaged underneath (same length, text garbled): 503 naming the index only.
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(st.photos.join("manifest.json")).unwrap()).unwrap();
    let rows = st.photos.join(manifest["rows"]["file"].as_str().unwrap());
    let mut bytes = std::fs::read(&rows).unwrap();
    let n = bytes.len();
    bytes[n - 24..].fill(0xff);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&rows)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    let (status, doc) = srv.post("/search", r#"{"text": "a photo of a cat", "k": 13}"#);
    let text = assert_private(doc.to_string().as_bytes(), st.dir.path());
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("index photos"), "{text}");
    assert!(srv.stderr().contains("damaged"), "{}", srv.stderr());
}

#[test]
fn a_rebuilt_index_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let caps = dir.path().join("caps");
    let build = |captions: &str| {
        let file = dir.path().join("captions.txt");
        std::fs::write(&file, captions).unwrap();
        let model = model();
        let args = ["index", "build", "--model", s(&model), "--texts", s(&file)];
        common::ok(&clip(&[&args[..], &["--out", s(&caps)]].concat()));
    };
    let captions = |doc: &Value| -> Vec<String> {
        let mut c: Vec<String> = doc["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["caption"].as_str().unwrap().to_string())
            .collect();
        c.sort();
        c
    };
    build("a photo of a cat\na red circle\n");
    let srv = Server::start(&["--index", s(&caps)]);
    let query = r#"{"text": "a photo of a cat", "k": 5}"#;
    let (status, doc) = srv.post("/search", query);
    assert_eq!(status, 200, "{doc}");
    assert_eq!(captions(&doc), ["a photo of a cat", "a red circle"]);
    build("a photo of a dog\na blue square\na green line\n");
    let (status, doc) = srv.post("/search", query);
    assert_eq!(status, 200, "{doc}");
    assert_eq!(
        captions(&doc),
        ["a blue square", "a green line", "a photo of a dog"]
    );
    assert!(srv.stderr().contains("reopened"), "{}", srv.stderr());
    // SIGHUP reopens too.
    let hup = Command::new("kill")
        .args(["-HUP", &srv.child.id().to_string()])
        .status();
    assert!(hup.unwrap().success());
    let t = Instant::now();
    while srv.stderr().matches("reopened").count() < 2 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        srv.stderr().matches("reopened").count(),
        2,
        "{}",
        srv.stderr()
    );
    let (status, doc) = srv.post("/search", query);
    assert_eq!(status, 200, "{doc}");
    assert_eq!(captions(&doc).len(), 3);
}

/// `seed` changed by a few random edits: bytes replaced, JSON tokens inserted, ranges cut or
/// repeated.
fn mutate(seed: &[u8], rng: &mut impl rand::Rng) -> Vec<u8> {
    const TOKENS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "null",
        "true",
        "-1",
        "0",
        "1e999",
        "-0.0",
        "18446744073709551616",
        "4294967296",
        "\"\\u0000\"",
        "\"\\ud800\"",
        "\"text\"",
        "\"image\"",
        "\"embedding\"",
        "\"k\"",
        "\"ids\"",
        "\"num_images\"",
        "\"indice_name\"",
        "\"data:image/png;base64,iVBORw0KGgo=\"",
        "\u{fffd}",
        "\\",
        "[[[[[[[[",
        "1.5",
    ];
    let mut b = seed.to_vec();
    for _ in 0..rng.random_range(1..5) {
        let at = rng.random_range(0..=b.len());
        match rng.random_range(0..5) {
            0 if at < b.len() => b[at] = rng.random(),
            1 => {
                let t = TOKENS[rng.random_range(0..TOKENS.len())];
                b.splice(at..at, t.bytes());
            }
            2 => {
                let end = rng.random_range(at..=b.len());
                b.drain(at..end);
            }
            3 => {
                let end = rng.random_range(at..=b.len().min(at + 64));
                let piece = b[at..end].to_vec();
                b.splice(at..at, piece);
            }
            _ => b.truncate(at),
        }
    }
    b
}

#[test]
fn mutated_request_bodies_get_a_2xx_or_4xx_never_a_panic() {
    use rand::{Rng, SeedableRng};
    use tower::ServiceExt;
    let dir = tempfile::tempdir().unwrap();
    let caps = dir.path().join("caps");
    let model = model();
    let args = ["index", "build", "--model", s(&model), "--texts"];
    let texts = fixtures().join("captions.txt");
    common::ok(&clip(
        &[&args[..], &[s(&texts), "--out", s(&caps)]].concat(),
    ));
    let opts = clip::serve::ServeOptions {
        indexes: vec![clip::serve::NamedIndex::parse(&format!("caps={}", s(&caps))).unwrap()],
        model: None,
        device: clip::Device::Cpu,
        allow_origin: None,
        allow_hosts: Vec::new(),
        absolute_paths: false,
        limits: Default::default(),
        precision: None,
    };
    let server = clip::serve::Server::load(&opts, &|_| {}).unwrap();
    let router = server.router();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(caps.join("manifest.json")).unwrap()).unwrap();
    let dim = manifest["dimension"].as_u64().unwrap() as usize;
    let seeds = [
        (
            "/search",
            r#"{"text": "a photo of a cat", "k": 3, "index": "caps"}"#.to_string(),
        ),
        (
            "/search",
            json!({ "embedding": vec![0.5; dim], "k": 2 }).to_string(),
        ),
        (
            "/search",
            json!({ "image": b64(&std::fs::read(fixtures().join("images/img00.png")).unwrap()) })
                .to_string(),
        ),
        (
            "/knn-service",
            json!({ "text": "a red circle", "modality": "image", "num_images": 2,
                    "num_result_ids": 4, "indice_name": "caps" })
            .to_string(),
        ),
        (
            "/metadata",
            r#"{"ids": [0, 3, 11, 99], "indice_name": "caps"}"#.to_string(),
        ),
    ];
    let mut rng = rand_xoshiro::SplitMix64::seed_from_u64(22);
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut runs = 0;
    while runs < 20_000 && Instant::now() < deadline {
        // Each seed as it is first, then mutated ones.
        let pick = if runs < seeds.len() {
            runs
        } else {
            rng.random_range(0..seeds.len())
        };
        let (route, seed) = &seeds[pick];
        let body = if runs < seeds.len() {
            seed.as_bytes().to_vec()
        } else {
            mutate(seed.as_bytes(), &mut rng)
        };
        let req = axum::http::Request::post(*route)
            .header("host", "127.0.0.1")
            .body(axum::body::Body::from(body.clone()))
            .unwrap();
        let res = rt.block_on(router.clone().oneshot(req)).unwrap();
        let status = res.status().as_u16();
        let shown = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        assert!(
            (200..300).contains(&status) || (400..500).contains(&status),
            "{route} {shown:?}: {status}"
        );
        *statuses.entry(status).or_default() += 1;
        runs += 1;
    }
    eprintln!("{runs} request bodies (seed 22): statuses {statuses:?}");
    assert!(runs >= 100, "only {runs} requests in the time given");
    assert!(
        statuses.contains_key(&200) && statuses.contains_key(&400),
        "{statuses:?}"
    );
}

/// Another process truncating a served index's vectors or rows file in place (a `cp` over
/// it) used to kill the server with SIGBUS from its memory map. Now that request gets a 503
/// naming the index, the server stays up, and a rebuilt index is served again.
#[test]
fn an_index_truncated_while_served_is_an_error_not_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let caps = dir.path().join("caps");
    let build = || {
        let model = model();
        let texts = fixtures().join("captions.txt");
        let args = ["index", "build", "--model", s(&model), "--texts", s(&texts)];
        common::ok(&clip(&[&args[..], &["--out", s(&caps)]].concat()));
    };
    build();
    let mut srv = Server::start(&["--index", s(&caps)]);
    let query = r#"{"text": "a photo of a cat", "k": 3}"#;
    assert_eq!(srv.post("/search", query).0, 200);
    for prefix in ["vectors-", "rows-"] {
        let file = std::fs::read_dir(&caps)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                name.starts_with(prefix) && !name.ends_with(".tmp")
            })
            .unwrap_or_else(|| panic!("no {prefix}* file in the index"));
        // Truncate in place: the same inode the server has mapped.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(0)
            .unwrap();
        let (status, doc) = srv.post("/search", query);
        let text = assert_private(doc.to_string().as_bytes(), dir.path());
        assert_eq!(status, 503, "{prefix}: {text}");
        assert!(text.contains("index caps"), "{prefix}: {text}");
        assert!(
            srv.child.try_wait().unwrap().is_none(),
            "{prefix}: the server died: {}",
            srv.stderr()
        );
        // A rebuild (new generation files, written atomically) is served again.
        std::fs::remove_dir_all(&caps).unwrap();
        build();
        let t = Instant::now();
        let mut answer = srv.post("/search", query);
        while answer.0 != 200 && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(200));
            answer = srv.post("/search", query);
        }
        assert_eq!(answer.0, 200, "{prefix}: {}", answer.1);
        assert_eq!(answer.1["results"].as_array().unwrap().len(), 3);
    }
}
