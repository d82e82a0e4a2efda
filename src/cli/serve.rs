//! `clip serve`: answer searches over HTTP and from a browser page.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};

use anyhow::Result;
use clip::serve::{NamedIndex, ServeLimits, ServeOptions, Server};

use super::common::PrecisionArg;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Index directory to serve, or NAME=DIR (repeat for several; the first is the default and
    /// an unnamed one is named after its folder).
    #[arg(long = "index", required = true, value_name = "[NAME=]INDEX")]
    indexes: Vec<String>,
    /// Address to listen on (127.0.0.1: this machine only).
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// Port to listen on (0: any free port; the address is printed on stdout).
    #[arg(long, default_value_t = 1234)]
    port: u16,
    /// Model for text and image queries (default: the one each index records).
    #[arg(long)]
    model: Option<String>,
    /// Let web pages from this origin call the API (CORS), e.g. a clip-front deployment.
    #[arg(long)]
    allow_origin: Option<String>,
    /// A host name this server answers to besides localhost and loopback addresses (any
    /// port), e.g. the name a reverse proxy forwards; repeat for several. Other Host values
    /// are refused (421) when listening on a loopback address, against DNS rebinding.
    #[arg(long = "allow-host", value_name = "NAME")]
    allow_hosts: Vec<String>,
    /// Name image files in results by absolute path instead of relative to the indexed
    /// folder (the form served before this flag existed).
    #[arg(long)]
    absolute_paths: bool,
    /// Largest uploaded image in pixels (width × height).
    #[arg(long, value_name = "PIXELS", default_value_t = ServeLimits::default().max_pixels)]
    max_pixels: u64,
    /// Connections open at once; more wait to be accepted.
    #[arg(long, value_name = "N", default_value_t = ServeLimits::default().max_connections)]
    max_connections: usize,
    /// Seconds a client has to send a request's headers; also how long an idle keep-alive
    /// connection stays open.
    #[arg(long, value_name = "SECS", default_value_t = ServeLimits::default().header_timeout_secs)]
    header_timeout: u64,
    /// Device for the models.
    #[arg(long, value_enum, default_value_t)]
    device: clip::DeviceKind,
    #[command(flatten)]
    precision: PrecisionArg,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let indexes = a
        .indexes
        .iter()
        .map(|s| NamedIndex::parse(s))
        .collect::<clip::Result<_>>()?;
    let opts = ServeOptions {
        indexes,
        model: a.model,
        device: a.device.device()?,
        allow_origin: a.allow_origin,
        allow_hosts: a.allow_hosts,
        absolute_paths: a.absolute_paths,
        limits: ServeLimits {
            max_pixels: a.max_pixels,
            max_connections: a.max_connections,
            header_timeout_secs: a.header_timeout,
        },
        precision: a.precision.precision,
    };
    let server = Server::load(&opts, &|msg| eprintln!("{msg}"))?;
    server.run(SocketAddr::new(a.host, a.port), |addr| {
        // The first line of stdout, for scripts and tests that asked for port 0.
        println!("listening on http://{addr}");
        let _ = std::io::stdout().flush();
    })?;
    Ok(())
}
