//! Traces in the terminal: the demo's own OTLP receiver collects the enforcing sidecar's spans,
//! and one retried call and one refused call are printed as trees, so a newcomer sees what a
//! trace shows without running a collector.

use breakwater_fault::otlp::ReceivedSpan;

fn ms(s: &ReceivedSpan) -> String {
    let d = s.duration;
    if d.as_millis() >= 1 { format!("{}ms", d.as_millis()) } else { format!("{}µs", d.as_micros()) }
}

fn event_line(name: &str, attrs: &std::collections::BTreeMap<String, String>) -> String {
    let keep: Vec<String> = attrs
        .iter()
        .filter(|(k, _)| {
            !matches!(k.as_str(), "service" | "level" | "target")
                && !k.starts_with("code.")
                && !k.starts_with("thread.")
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    if keep.is_empty() { name.to_owned() } else { format!("{name} ({})", keep.join(", ")) }
}

/// Prints the trace of `client` with its attempts.
fn print_tree(title: &str, client: &ReceivedSpan, spans: &[ReceivedSpan]) {
    println!("  {title} — trace {}", &client.trace_id);
    let status = client.attr("http.response.status_code").unwrap_or("?");
    let error = client.attr("error.type").map(|e| format!(", {e}")).unwrap_or_default();
    println!(
        "    {} → {status}{error} in {}   [policy {}, request {}]",
        client.name,
        ms(client),
        client.attr("breakwater.policy").unwrap_or("-"),
        client.attr("breakwater.request_id").map_or("-", |r| &r[..r.len().min(8)])
    );
    for (name, attrs) in &client.events {
        println!("    · {}", event_line(name, attrs));
    }
    let mut attempts: Vec<&ReceivedSpan> =
        spans.iter().filter(|s| s.parent_span_id == client.span_id).collect();
    attempts.sort_by_key(|a| a.attr("breakwater.attempt").and_then(|n| n.parse::<u32>().ok()));
    for (i, a) in attempts.iter().enumerate() {
        let branch = if i + 1 == attempts.len() { "└─" } else { "├─" };
        let endpoint = match (a.attr("server.address"), a.attr("server.port")) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            _ => "-".to_owned(),
        };
        println!(
            "    {branch} {} → {endpoint}  {}  {}",
            a.name,
            ms(a),
            a.attr("breakwater.outcome").unwrap_or("?")
        );
        let pipe = if i + 1 == attempts.len() { " " } else { "│" };
        for (name, attrs) in &a.events {
            println!("    {pipe}    · {}", event_line(name, attrs));
        }
    }
}

fn is_client(s: &ReceivedSpan) -> bool {
    s.kind == 3 && !s.name.starts_with("attempt")
}

fn attempts_of(spans: &[ReceivedSpan], client: &ReceivedSpan) -> usize {
    spans.iter().filter(|s| s.parent_span_id == client.span_id).count()
}

/// Prints one retried call and one refused call, if the spans hold them.
pub fn show(spans: &[ReceivedSpan]) {
    let retried = spans
        .iter()
        .filter(|s| is_client(s) && s.attr("http.response.status_code") == Some("200"))
        .filter(|s| s.has_event("retry scheduled"))
        .max_by_key(|s| (attempts_of(spans, s), s.events.len()));
    let refused = spans
        .iter()
        .filter(|s| is_client(s))
        .find(|s| matches!(s.attr("error.type"), Some("circuit-open" | "bulkhead-full")));
    println!("Traces (what an engineer sees in Jaeger or Tempo; here from the demo's own OTLP receiver):");
    match retried {
        Some(c) => print_tree("a call recovered by retries", c, spans),
        None => println!("  (no retried call was traced)"),
    }
    match refused {
        Some(c) => print_tree("a call Breakwater refused", c, spans),
        None => println!("  (no refused call was traced)"),
    }
    println!();
}
