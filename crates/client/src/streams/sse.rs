//! An incremental parser of Server-Sent Events (the `text/event-stream` framing of the WHATWG
//! HTML standard, section "Interpreting an event stream"). Bytes go in as they arrive, split
//! anywhere (inside a field name, a UTF-8 character, or between the CR and LF of one line end);
//! complete events come out.
//!
//! The rules kept: lines end with CRLF, LF or CR; a line starting with `:` is a comment; a
//! field is `name: value` (one space after the colon dropped) or a bare `name`; `data` lines
//! accumulate, joined with LF; `event` names the event (default `message`); `id` sets the last
//! event id, which stays in force for later events until changed (an id containing NUL is
//! ignored); an empty line dispatches the event, unless no `data` line came; a leading byte
//! order mark is dropped; an unfinished event at the end of the stream is discarded.

use std::collections::VecDeque;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SseEvent {
    /// `event:`, or `message` if none was given.
    pub event: String,
    /// The `data:` lines joined with LF.
    pub data: String,
    /// The last event id in force when it was dispatched.
    pub id: Option<String>,
}

/// A line or an event grew past the parser's limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TooLarge {
    /// The limit, in bytes.
    pub limit: usize,
}

/// The parser's state between chunks.
#[derive(Debug)]
pub(crate) struct SseParser {
    /// The bytes of the line not yet ended.
    line: Vec<u8>,
    /// The previous chunk ended with CR: an LF starting this one ends no line.
    after_cr: bool,
    /// Whether any byte has been seen (a byte order mark is dropped only at the start).
    started: bool,
    event: String,
    data: String,
    /// A `data` field came since the last dispatch.
    has_data: bool,
    last_id: Option<String>,
    ready: VecDeque<SseEvent>,
    /// Most bytes of one line or one event's data.
    limit: usize,
}

const BYTE_ORDER_MARK: &[u8] = b"\xEF\xBB\xBF";

impl SseParser {
    /// A parser refusing lines or events longer than `limit` bytes.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            line: Vec::new(),
            after_cr: false,
            started: false,
            event: String::new(),
            data: String::new(),
            has_data: false,
            last_id: None,
            ready: VecDeque::new(),
            limit,
        }
    }

    /// Feeds the next bytes of the stream; events they complete are queued for
    /// [`SseParser::next_event`].
    pub(crate) fn push(&mut self, mut chunk: &[u8]) -> Result<(), TooLarge> {
        if self.after_cr && !chunk.is_empty() {
            self.after_cr = false;
            if chunk[0] == b'\n' {
                chunk = &chunk[1..];
            }
        }
        while let Some(end) = chunk.iter().position(|byte| matches!(byte, b'\n' | b'\r')) {
            self.append(&chunk[..end])?;
            self.end_line()?;
            let crlf = chunk[end] == b'\r' && chunk.get(end + 1) == Some(&b'\n');
            if chunk[end] == b'\r' && end + 1 == chunk.len() {
                self.after_cr = true;
            }
            chunk = &chunk[end + if crlf { 2 } else { 1 }..];
        }
        self.append(chunk)
    }

    /// The next complete event, if one is queued.
    pub(crate) fn next_event(&mut self) -> Option<SseEvent> {
        self.ready.pop_front()
    }

    fn append(&mut self, bytes: &[u8]) -> Result<(), TooLarge> {
        if self.line.len() + bytes.len() > self.limit {
            return Err(TooLarge { limit: self.limit });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn end_line(&mut self) -> Result<(), TooLarge> {
        let mut line = std::mem::take(&mut self.line);
        if !self.started {
            self.started = true;
            if line.starts_with(BYTE_ORDER_MARK) {
                line.drain(..BYTE_ORDER_MARK.len());
            }
        }
        let line = String::from_utf8_lossy(&line);
        if line.is_empty() {
            self.dispatch();
            return Ok(());
        }
        if line.starts_with(':') {
            return Ok(());
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event),
            "data" => {
                if self.data.len() + value.len() + 1 > self.limit {
                    return Err(TooLarge { limit: self.limit });
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.last_id = Some(value.to_owned()),
            _ => {} // `retry` and unknown fields: nothing a client without reconnects needs.
        }
        Ok(())
    }

    fn dispatch(&mut self) {
        let event = std::mem::take(&mut self.event);
        if !std::mem::take(&mut self.has_data) {
            return;
        }
        self.ready.push_back(SseEvent {
            event: if event.is_empty() { "message".to_owned() } else { event },
            data: std::mem::take(&mut self.data),
            id: self.last_id.clone(),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(name: &str, data: &str, id: Option<&str>) -> SseEvent {
        SseEvent { event: name.to_owned(), data: data.to_owned(), id: id.map(str::to_owned) }
    }

    fn parse_chunks(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut parser = SseParser::new(1 << 20);
        let mut events = Vec::new();
        for chunk in chunks {
            parser.push(chunk).expect("within the limit");
            while let Some(event) = parser.next_event() {
                events.push(event);
            }
        }
        events
    }

    /// The stream fed whole, split at every single point, split at every pair of points, and
    /// one byte at a time: always the same events.
    fn parse_every_way(stream: &[u8]) -> Vec<SseEvent> {
        let whole = parse_chunks(&[stream]);
        for split in 0..=stream.len() {
            let (left, right) = stream.split_at(split);
            assert_eq!(parse_chunks(&[left, right]), whole, "split at {split}");
        }
        for first in 0..=stream.len() {
            for second in first..=stream.len() {
                let chunks = [&stream[..first], &stream[first..second], &stream[second..]];
                assert_eq!(parse_chunks(&chunks), whole, "split at {first} and {second}");
            }
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(parse_chunks(&bytes), whole, "byte by byte");
        whole
    }

    #[test]
    fn events_as_the_server_writes_them_survive_any_chunking() {
        let stream = b"event: Tick\nid: 0:15,1:7\ndata: {\"n\":1}\n\n:\n\n\
                       event: Tock\ndata: {\"n\":2}\nid: 0:16,1:7\n\n";
        assert_eq!(
            parse_every_way(stream),
            vec![
                event("Tick", "{\"n\":1}", Some("0:15,1:7")),
                event("Tock", "{\"n\":2}", Some("0:16,1:7")),
            ]
        );
    }

    #[test]
    fn multi_line_data_is_joined_with_line_feeds_under_any_line_ending() {
        for ending in [&b"\n"[..], b"\r\n", b"\r"] {
            let mut stream = Vec::new();
            for line in [&b"data: first"[..], b"data:second", b"data", b"data:  third", b""] {
                stream.extend_from_slice(line);
                stream.extend_from_slice(ending);
            }
            assert_eq!(
                parse_every_way(&stream),
                vec![event("message", "first\nsecond\n\n third", None)],
                "{ending:?}"
            );
        }
    }

    #[test]
    fn a_cr_at_a_chunk_end_followed_by_lf_is_one_line_end() {
        // "data: a\r" | "\n\r" | "\n": two line ends (CRLF, CRLF), so one event, not two blank
        // lines' worth of confusion.
        let events = parse_chunks(&[b"data: a\r", b"\n\r", b"\n", b"data: b\r", b"\r"]);
        assert_eq!(events, vec![event("message", "a", None), event("message", "b", None)]);
    }

    #[test]
    fn comments_unknown_fields_and_dataless_events_dispatch_nothing() {
        let stream = b": keep-alive\n\nevent: Lonely\nid: 7\nretry: 1000\n\nfoo: bar\ndata: x\n\n";
        // `id: 7` came with no data: nothing dispatched, but the id stays in force.
        assert_eq!(parse_every_way(stream), vec![event("message", "x", Some("7"))]);
    }

    #[test]
    fn ids_persist_until_changed_and_nul_ids_are_ignored() {
        let stream = b"id: 1\ndata: a\n\ndata: b\n\nid: 2\0x\ndata: c\n\nid\ndata: d\n\n";
        assert_eq!(
            parse_every_way(stream),
            vec![
                event("message", "a", Some("1")),
                event("message", "b", Some("1")),
                event("message", "c", Some("1")),
                event("message", "d", Some("")),
            ]
        );
    }

    #[test]
    fn multibyte_characters_split_across_chunks_decode_whole() {
        let stream = "event: Überweisung\ndata: {\"to\":\"Zoë\",\"note\":\"€5 ☕\"}\n\n".as_bytes();
        assert_eq!(
            parse_every_way(stream),
            vec![event("Überweisung", "{\"to\":\"Zoë\",\"note\":\"€5 ☕\"}", None)]
        );
    }

    #[test]
    fn a_leading_byte_order_mark_is_dropped_and_an_unfinished_event_is_not_dispatched() {
        let stream = b"\xEF\xBB\xBFdata: first\n\ndata: unfinished\n";
        assert_eq!(parse_every_way(stream), vec![event("message", "first", None)]);
        // A field named with a BOM later in the stream is just an unknown field.
        assert_eq!(parse_chunks(&[b"data: a\n\n\xEF\xBB\xBFdata: b\n\n"]).len(), 1);
    }

    #[test]
    fn lines_and_events_past_the_limit_are_refused() {
        let mut parser = SseParser::new(16);
        assert!(parser.push(b"data: 0123456789").is_ok());
        assert_eq!(parser.push(b"abcdefgh"), Err(TooLarge { limit: 16 }));

        let mut parser = SseParser::new(16);
        assert!(parser.push(b"data: 0123456789\n").is_ok());
        assert_eq!(parser.push(b"data: 0123456789\n"), Err(TooLarge { limit: 16 }));
    }
}
