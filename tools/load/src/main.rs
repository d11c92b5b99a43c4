//! corepin-load: the load generator bundled with corepin. It speaks only
//! public protocols (HTTP, HTTP streaming and long-polling, WebSocket, the
//! GRIP publish API, nchan's publisher), so it measures corepin, Pushpin
//! and nginx/nchan the same way. Every mode prints a progress line on
//! stderr while it runs and one JSON object on stdout at the end.

use corepin_load::{
    echo, fanout, grip_backend, proxy, publish, soak, soak_worker, storm, storm_backend, subscribe,
    ws_echo,
};

const USAGE: &str = "\
corepin-load MODE [--flag value]...

  subscribe   hold N subscribers on a URL
      --to HOST:PORT  --subscribers N  --kind stream|longpoll|ws|mix
      --path TEMPLATE (or --stream-path/--longpoll-path/--ws-path; {channel}
      is replaced; defaults /stream, /response, /ws ?channel={channel})
      --channels K  --channel-prefix P  --rate OPENS_PER_S  --workers W
      --hold-s S  --ready-file FILE  --timeout-s S
      --tls CA_FILE (https and wss, trusting that CA; see proxy for --sni,
      --resume)
  publish     publish timestamped messages
      --to HOST:PORT | --socket PATH   --via http|socket|nchan
      --publish-path P  --messages M  --seconds S  --rate PER_S  --size BYTES
      --channels K  --channel-prefix P  --auth 'Bearer ...'
      --conns C (publishers in parallel, each owning every C-th channel)
      --cpu-pids PID,... (report the server's CPU time per publish)
  fanout      subscribe and publish at once; latency, lost, duplicated, order
      subscribe's flags, publish's flags with --publish-to HOST:PORT[,...]
      (each message to every one listed) and --publish-rate PER_S, plus
      --settle-ms MS --grace-ms MS --timeout-s S, --lockstep HOST:PORT
      (corepin's control address: publish each message once its /metrics
      shows every subscriber held, long-polls included), and --cpu-group
      NAME=PID,... (repeatable: CPU time per delivery of each group);
      --tls CA_FILE: subscribers over TLS (publishes stay plain HTTP)
  rooms       fanout shaped as chat rooms: 200 channels x 10 subscribers,
      20000 publishes of one message to one room (fanout's flags override)
  proxy       keep-alive GET throughput and latency
      --to HOST:PORT --path P --conns C --threads T --seconds S --warmup-s S
      --tls CA_FILE (HTTPS, trusting that CA) --sni NAME (default localhost)
      --per-conn N (new connection, so a new handshake, every N requests)
      --resume yes|no (TLS session resumption on reconnects; default yes)
  ws-echo     WebSocket echo round trips
      --to HOST:PORT --path P --conns C --seconds S --size BYTES
      --tls CA_FILE --sni NAME --resume yes|no (wss, as in proxy)
  echo-server [HOST:PORT]   WebSocket / WebSocket-over-HTTP echo backend
  soak        the long mixed run (benches/soak.sh): churning subscribers of
      every kind, steady publishes plus bursts, loss/duplicates/order per
      subscriber; flags and their meaning in tools/load/src/soak.rs;
      --tls CA_FILE --sni NAME --resume yes|no: subscribers over TLS
      (publishes stay plain HTTP)
  grip-backend [HOST:PORT]  GRIP backend for the soak (stream, long-poll,
      WebSocket, WebSocket-over-HTTP holds)
";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or(&[]);
    match args.first().map(String::as_str) {
        Some("subscribe") => subscribe::run(rest),
        Some("publish") => publish::run(rest),
        Some("fanout") => fanout::run(rest),
        Some("rooms") => fanout::run_rooms(rest),
        Some("proxy") => proxy::run(rest),
        Some("ws-echo") => ws_echo::run(rest),
        Some("worker") => subscribe::worker(rest),
        Some("soak") => soak::run(rest),
        Some("soak-worker") => soak_worker::run(rest),
        Some("grip-backend") => grip_backend::run(rest),
        Some("storm") => storm::run(rest),
        Some("storm-worker") => storm::worker(rest),
        Some("storm-backend") => storm_backend::run(rest),
        Some("echo-server") => echo::run(args.get(1).map_or("127.0.0.1:0", String::as_str)),
        Some("-h" | "--help" | "help") => print!("{USAGE}{}", storm::USAGE),
        _ => {
            eprint!("{USAGE}{}", storm::USAGE);
            std::process::exit(2)
        }
    }
}
