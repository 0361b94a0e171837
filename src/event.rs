//! [`ProcessEvent`]s, the [`OutputBatch`]es that carry output lines in bulk, and the
//! [`Subscription`](crate::Subscription) a subscriber reads events from.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::text::{Inline, ProcessId, SharedText};
use crate::types::{Signal, Stream};

/// The most bytes one [`ProcessEvent::Output`] carries. A longer line is delivered as several
/// consecutive events of at most this many bytes each (cut at a UTF-8 character boundary where
/// one is near); the ring buffer keeps the line whole.
pub const MAX_LINE_LEN: usize = 64 * 1024;

/// Something that happened to a managed process.
///
/// For one process, a subscriber sees `Started` first, then its `Output` lines in order per
/// stream, then `Killed` (when a signal ended it) and `Exited` last. Serialises as JSON tagged
/// by `"type"`:
///
/// ```
/// use core_process::{ProcessEvent, Stream};
///
/// let ev = ProcessEvent::Output { id: "proc-1".into(), line: "hi".into(), stream: Stream::Stdout };
/// assert_eq!(
///     serde_json::to_string(&ev).unwrap(),
///     r#"{"type":"output","id":"proc-1","line":"hi","stream":"stdout"}"#
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProcessEvent {
    /// The process was spawned.
    Started {
        /// The process id.
        id: ProcessId,
        /// The program.
        command: String,
        /// Its arguments.
        args: Vec<String>,
        /// Its working directory, when one was given.
        dir: Option<PathBuf>,
        /// Its OS pid.
        pid: u32,
    },
    /// One line of output, without its line ending (`\n` or `\r\n`), lossy UTF-8.
    Output {
        /// The process id.
        id: ProcessId,
        /// The line (at most [`MAX_LINE_LEN`] bytes); a [`Line`] derefs to `str`.
        line: Line,
        /// The pipe it came from.
        stream: Stream,
    },
    /// The process ended and was reaped. Always the last event of a process.
    Exited {
        /// The process id.
        id: ProcessId,
        /// Its exit code; `None` when a signal ended it.
        exit_code: Option<i32>,
        /// How long it ran (serialised as fractional seconds).
        #[serde(with = "crate::types::secs_f64")]
        duration: Duration,
        /// Why it counts as failed (non-zero code, signal, timeout), or `None` on success.
        error: Option<String>,
    },
    /// A signal ended the process. Followed by its `Exited` event.
    Killed {
        /// The process id.
        id: ProcessId,
        /// The signal that ended it, as a name (`"SIGKILL"`).
        signal: Signal,
        /// Whether it was stopped because its timeout fired.
        timed_out: bool,
    },
    /// A supervised process started a child (its first, or a restart). Links the supervised
    /// id (`sup-N`) to the child's process id (`proc-N`), whose own events follow.
    Attempt {
        /// The supervised process's id.
        id: ProcessId,
        /// Which start this is (1 for the first).
        attempt: u32,
        /// The child's process id.
        process_id: ProcessId,
        /// The child's OS pid.
        pid: u32,
    },
    /// A supervised process's current child passed its readiness probe.
    Ready {
        /// The supervised process's id.
        id: ProcessId,
        /// Which start became ready.
        attempt: u32,
    },
    /// A supervised process's child ended (or was stopped by a probe) and will be started again
    /// after `delay`.
    Restarting {
        /// The supervised process's id.
        id: ProcessId,
        /// The number of the start to come.
        attempt: u32,
        /// How long it waits first (serialised as fractional seconds).
        #[serde(with = "crate::types::secs_f64")]
        delay: Duration,
        /// Why the previous child ended.
        reason: String,
    },
    /// A supervised process gave up: too many failed starts within its start-limit window. It
    /// stays there until restarted by hand.
    Fatal {
        /// The supervised process's id.
        id: ProcessId,
        /// Why it gave up.
        reason: String,
    },
    /// A supervised process stopped for good: stopped by hand, by shutdown, or its restart
    /// policy restarts it no more.
    Stopped {
        /// The supervised process's id.
        id: ProcessId,
        /// Why its last child ended, when it ended on its own.
        reason: Option<String>,
    },
}

impl ProcessEvent {
    /// The id of the process the event is about.
    pub fn id(&self) -> &str {
        match self {
            ProcessEvent::Started { id, .. }
            | ProcessEvent::Output { id, .. }
            | ProcessEvent::Exited { id, .. }
            | ProcessEvent::Killed { id, .. }
            | ProcessEvent::Attempt { id, .. }
            | ProcessEvent::Ready { id, .. }
            | ProcessEvent::Restarting { id, .. }
            | ProcessEvent::Fatal { id, .. }
            | ProcessEvent::Stopped { id, .. } => id,
        }
    }

    /// Whether this is a lifecycle event (every kind but `Output`: `Started`, `Exited`,
    /// `Killed` and the supervision events), which no subscriber ever misses.
    pub fn is_lifecycle(&self) -> bool {
        !matches!(self, ProcessEvent::Output { .. })
    }
}

/// One line of a process's output, as [`ProcessEvent::Output`] carries it: a `str` (it derefs
/// to one) that shares the storage of the [`OutputBatch`] it arrived in.
///
/// Making and cloning a `Line` allocates nothing: a short line (up to 23 bytes) is kept in
/// place, a longer one shares its batch's text. That is what lets a subscriber keep up with a
/// process printing millions of lines a second. The price: a long `Line` keeps its whole batch
/// (a pipe read: up to 128 KiB) alive. To keep lines for long, convert them with
/// [`String::from`] or [`to_string`](ToString::to_string).
///
/// ```
/// use core_process::Line;
///
/// let line = Line::from("hello world");
/// assert!(line.starts_with("hello"));
/// assert_eq!(line, "hello world");
/// assert_eq!(line.len(), 11);
/// assert_eq!(String::from(line), "hello world");
/// ```
#[derive(Clone)]
pub struct Line(LineRepr);

#[derive(Clone)]
enum LineRepr {
    /// Short lines (most lines of most programs) live in place: no reference count to touch.
    Inline(Inline),
    Shared {
        text: Arc<SharedText>,
        start: usize,
        end: usize,
    },
}

impl Line {
    #[inline(always)]
    fn shared(text: &Arc<SharedText>, range: std::ops::Range<usize>) -> Self {
        match Inline::from_range(text, range.clone()) {
            Some(inline) => Line(LineRepr::Inline(inline)),
            None => Line(LineRepr::Shared {
                text: Arc::clone(text),
                start: range.start,
                end: range.end,
            }),
        }
    }

    /// The line.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            LineRepr::Inline(inline) => inline.as_str(),
            LineRepr::Shared { text, start, end } => text.get(*start..*end).unwrap_or_default(),
        }
    }

    fn from_inline(inline: Inline) -> Self {
        Line(LineRepr::Inline(inline))
    }
}

impl From<String> for Line {
    fn from(text: String) -> Self {
        match Inline::new(&text) {
            Some(inline) => Line::from_inline(inline),
            None => {
                let end = text.len();
                Line(LineRepr::Shared {
                    text: Arc::new(SharedText::new(text)),
                    start: 0,
                    end,
                })
            }
        }
    }
}

str_like!(Line);

/// Output lines of one stream of one process, carried in bulk.
///
/// A process's reader publishes one batch per read from the pipe instead of one event per
/// line; subscribers still see one [`ProcessEvent::Output`] per line, whose [`Line`]s share the
/// batch's text. The text holds whole lines: every line ends with `\n` except possibly the last,
/// which the batch also counts as a line (the tail of a line longer than [`MAX_LINE_LEN`], or
/// output that ended without a newline). Invalid UTF-8 is replaced when the batch is made (the
/// process's ring buffer keeps the exact bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct OutputBatch {
    id: ProcessId,
    stream: Stream,
    text: Arc<SharedText>,
    lines: u64,
}

impl OutputBatch {
    /// A batch of the lines in `data` (see the type's documentation for its form).
    pub fn new(id: ProcessId, stream: Stream, data: Vec<u8>) -> Self {
        let text = match String::from_utf8(data) {
            Ok(valid) => valid,
            Err(e) => {
                let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
                crate::text::recycle(e.into_bytes());
                text
            }
        };
        let lines = count_lines(text.as_bytes());
        OutputBatch {
            id,
            stream,
            text: Arc::new(SharedText::new(text)),
            lines,
        }
    }

    /// The process id.
    pub fn id(&self) -> &ProcessId {
        &self.id
    }

    /// The stream the lines came from.
    pub fn stream(&self) -> Stream {
        self.stream
    }

    /// The text of the batch (its lines with their line endings).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// How many [`ProcessEvent::Output`] events the batch turns into.
    pub fn line_count(&self) -> u64 {
        self.lines
    }

    /// The lines, without line endings, each at most [`MAX_LINE_LEN`] bytes.
    pub fn lines(&self) -> impl Iterator<Item = Line> + '_ {
        Lines::new(self.text.as_bytes()).map(|range| Line::shared(&self.text, range))
    }

    /// The batch as one `Output` event per line.
    pub fn events(&self) -> impl Iterator<Item = ProcessEvent> + '_ {
        Lines::new(self.text.as_bytes()).map(|range| self.event(range))
    }

    /// The `Output` event of the line at `range` of the text.
    #[inline(always)]
    fn event(&self, range: std::ops::Range<usize>) -> ProcessEvent {
        // The line first: the id's two forms then meet in registers, not in a stack slot
        // written in words and read back in wider pieces (a store-forwarding stall per line).
        let line = Line::shared(&self.text, range);
        ProcessEvent::Output {
            id: self.id.clone(),
            line,
            stream: self.stream,
        }
    }

    /// The `Output` event of the line that starts at byte `*pos` of the text, moving `*pos` to
    /// the start of the next line; `None` once the batch is used up. For cursors that walk a
    /// batch one line per call.
    #[inline(always)]
    pub(crate) fn event_at(&self, pos: &mut usize) -> Option<ProcessEvent> {
        // A short line (most lines) is found and copied in one go; the others, and the last
        // few bytes of the batch, the usual way.
        let line = match Inline::line_at(&self.text, *pos) {
            Ok((inline, next)) => {
                *pos = next;
                Line(LineRepr::Inline(inline))
            }
            Err(clean) => {
                let mut lines = Lines::at(self.text.as_bytes(), *pos);
                let range = lines.next_after(clean)?;
                *pos = lines.pos();
                Line::shared(&self.text, range)
            }
        };
        Some(ProcessEvent::Output {
            id: self.id.clone(),
            line,
            stream: self.stream,
        })
    }
}

impl fmt::Debug for OutputBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutputBatch")
            .field("id", &self.id)
            .field("stream", &self.stream)
            .field("bytes", &self.text.len())
            .field("lines", &self.lines)
            .finish()
    }
}

/// How many items [`Lines`] yields for `data`, without walking it line by line when no line
/// needs cutting.
pub(crate) fn count_lines(data: &[u8]) -> u64 {
    // No line can exceed the cap when the whole batch does not: count newlines in bulk.
    if data.len() <= MAX_LINE_LEN {
        let newlines = memchr::memchr_iter(b'\n', data).count() as u64;
        let unterminated = u64::from(data.last().is_some_and(|&b| b != b'\n'));
        return newlines + unterminated;
    }
    let mut count = 0u64;
    let mut start = 0usize;
    for nl in memchr::memchr_iter(b'\n', data) {
        if nl - start > MAX_LINE_LEN {
            return Lines::new(data).count() as u64;
        }
        count += 1;
        start = nl + 1;
    }
    match data.len() - start {
        0 => count,
        tail if tail <= MAX_LINE_LEN => count + 1,
        _ => Lines::new(data).count() as u64,
    }
}

/// Where to cut `data` so the first piece holds at most `max` bytes, preferring a UTF-8
/// character boundary (it backs off at most 3 bytes).
pub(crate) fn split_point(data: &[u8], max: usize) -> usize {
    if data.len() <= max {
        return data.len();
    }
    let mut cut = max;
    while cut > max.saturating_sub(3) && cut > 0 && (data[cut] & 0b1100_0000) == 0b1000_0000 {
        cut -= 1;
    }
    if cut == 0 || (data[cut] & 0b1100_0000) == 0b1000_0000 {
        max
    } else {
        cut
    }
}

/// Iterator over the lines of a batch's data, as byte ranges without line endings; long lines
/// cut into [`MAX_LINE_LEN`] pieces.
#[derive(Debug, Clone)]
pub(crate) struct Lines<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Lines<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Lines::at(data, 0)
    }

    /// Lines from byte offset `pos` on (a line start).
    pub(crate) fn at(data: &'a [u8], pos: usize) -> Self {
        Lines { data, pos }
    }

    /// Where the next line starts: lets a cursor keep its place across calls.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// [`next`](Iterator::next), when the first `clean` bytes of the next line are known to
    /// hold no newline (the search starts after them).
    #[inline]
    pub(crate) fn next_after(&mut self, clean: usize) -> Option<std::ops::Range<usize>> {
        let rest = self.data.get(self.pos..).filter(|r| !r.is_empty())?;
        let searched = rest.get(clean..).unwrap_or_default();
        let newline = memchr::memchr(b'\n', searched).map(|at| at + clean);
        let (len, consumed) = match newline {
            Some(nl) if nl <= MAX_LINE_LEN => (nl, nl + 1),
            Some(_) | None if rest.len() > MAX_LINE_LEN => {
                let cut = split_point(rest, MAX_LINE_LEN);
                // A piece that ends right before the newline takes the newline with it.
                let consumed = if rest.get(cut) == Some(&b'\n') {
                    cut + 1
                } else {
                    cut
                };
                (cut, consumed)
            }
            _ => (rest.len(), rest.len()),
        };
        let start = self.pos;
        self.pos += consumed;
        let end = if rest[..len].ends_with(b"\r") {
            start + len - 1
        } else {
            start + len
        };
        Some(start..end)
    }
}

impl Iterator for Lines<'_> {
    type Item = std::ops::Range<usize>;

    #[inline]
    fn next(&mut self) -> Option<std::ops::Range<usize>> {
        self.next_after(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::Just;

    fn lines(data: &[u8]) -> Vec<Vec<u8>> {
        Lines::new(data).map(|r| data[r].to_vec()).collect()
    }

    /// Whether the pool of read buffers holds a buffer of exactly `capacity` bytes; the pool
    /// is left as it was.
    fn pooled(capacity: usize) -> bool {
        let mut taken = Vec::new();
        loop {
            let buf = crate::text::read_buffer();
            if buf.capacity() == 0 {
                break;
            }
            taken.push(buf);
        }
        let found = taken.iter().any(|b| b.capacity() == capacity);
        for buf in taken {
            crate::text::recycle(buf);
        }
        found
    }

    /// A batch's read buffer goes back to the pool once the last line sharing it is dropped,
    /// not before.
    #[test]
    fn a_batch_gives_its_read_buffer_back_once_its_last_line_is_dropped() {
        // A capacity no other buffer has (a read asks for 64 KiB plus a carried line).
        let capacity = 64 * 1024 + 4093;
        let mut data = Vec::with_capacity(capacity);
        data.extend_from_slice(format!("{}\nshort\n", "x".repeat(40)).as_bytes());
        let batch = OutputBatch::new("p".into(), Stream::Stdout, data);
        let long = batch.lines().next().expect("a line");
        assert!(matches!(long.0, LineRepr::Shared { .. }));
        drop(batch);
        assert!(!pooled(capacity), "a line still shares the buffer");
        assert_eq!(long, "x".repeat(40));
        drop(long);
        assert!(pooled(capacity), "the buffer went back to the pool");
    }

    #[test]
    fn splits_lines_and_strips_endings() {
        assert_eq!(lines(b"a\nbb\r\n\nccc"), [&b"a"[..], b"bb", b"", b"ccc"]);
        assert_eq!(lines(b"x\n"), [b"x"]);
        assert!(lines(b"").is_empty());
    }

    #[test]
    fn long_lines_are_cut_into_capped_pieces() {
        let mut data = vec![b'x'; MAX_LINE_LEN * 2 + 10];
        data.push(b'\n');
        data.extend_from_slice(b"next\n");
        let got = lines(&data);
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].len(), MAX_LINE_LEN);
        assert_eq!(got[1].len(), MAX_LINE_LEN);
        assert_eq!(got[2].len(), 10);
        assert_eq!(got[3], b"next");
        assert_eq!(
            OutputBatch::new("p".into(), Stream::Stdout, data).line_count(),
            4
        );
    }

    #[test]
    fn exact_multiple_of_cap_makes_no_empty_piece() {
        let mut data = vec![b'y'; MAX_LINE_LEN];
        data.push(b'\n');
        assert_eq!(lines(&data).len(), 1);
    }

    #[test]
    fn cuts_at_char_boundaries() {
        // 'é' is two bytes: put one across the cap boundary.
        let mut data = vec![b'a'; MAX_LINE_LEN - 1];
        data.extend_from_slice("é".as_bytes());
        data.extend_from_slice(b"tail");
        let got = lines(&data);
        assert_eq!(got[0].len(), MAX_LINE_LEN - 1);
        assert!(std::str::from_utf8(&got[1]).unwrap().starts_with('é'));
        assert_eq!(split_point(b"abc", 10), 3);
    }

    #[test]
    fn fast_line_count_matches_the_iterator() {
        let mut cases: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"\n".to_vec(),
            b"a".to_vec(),
            b"a\nb".to_vec(),
            b"a\r\n\n\nccc\n".to_vec(),
        ];
        for len in [
            MAX_LINE_LEN - 1,
            MAX_LINE_LEN,
            MAX_LINE_LEN + 1,
            2 * MAX_LINE_LEN,
        ] {
            let long = vec![b'x'; len];
            let mut terminated = long.clone();
            terminated.push(b'\n');
            let mut framed = b"head\n".to_vec();
            framed.extend_from_slice(&terminated);
            framed.extend_from_slice(b"tail");
            cases.extend([long, terminated, framed]);
        }
        // Many short lines across the cap, as a bulk read makes them.
        cases.push(b"0123456789abcde\n".repeat(MAX_LINE_LEN / 8));
        for data in cases {
            assert_eq!(
                count_lines(&data),
                Lines::new(&data).count() as u64,
                "{} bytes",
                data.len()
            );
        }
    }

    #[test]
    fn lines_share_the_batch_and_behave_like_str() {
        let batch = OutputBatch::new("p".into(), Stream::Stdout, b"alpha\r\nbeta\n".to_vec());
        let got: Vec<Line> = batch.lines().collect();
        assert_eq!(got, ["alpha", "beta"]);
        let long = "x".repeat(40);
        let batch2 = OutputBatch::new(
            "p".into(),
            Stream::Stdout,
            format!("{long}\n{long}\n").into_bytes(),
        );
        let shared: Vec<Line> = batch2.lines().collect();
        match (&shared[0].0, &shared[1].0) {
            (LineRepr::Shared { text: a, .. }, LineRepr::Shared { text: b, .. }) => {
                assert!(
                    Arc::ptr_eq(a, b),
                    "long lines share the batch: no copy per line"
                )
            }
            _ => panic!("long lines should be shared"),
        }
        assert!(
            matches!(got[0].0, LineRepr::Inline(_)),
            "short lines are inline"
        );
        let beta = got[1].clone();
        assert_eq!(beta.to_uppercase(), "BETA");
        assert_eq!(format!("{beta}|{beta:?}"), "beta|\"beta\"");
        assert_eq!(String::from(beta), "beta");
        let mut set = std::collections::HashSet::new();
        set.insert(got[0].clone());
        assert!(set.contains("alpha"));
        let json = serde_json::to_string(&got[0]).unwrap();
        assert_eq!(json, "\"alpha\"");
        assert_eq!(serde_json::from_str::<Line>(&json).unwrap(), "alpha");
        assert_eq!("alpha", got[0]);
        assert_eq!(String::from("alpha"), got[0]);
    }

    #[test]
    fn inline_lines_are_exact_wherever_they_sit_in_the_batch() {
        // 23 bytes is the most kept inline, 24 is shared; the last lines of a batch have fewer
        // than a block of bytes after them (the short copy), the first ones more.
        let l23 = "é".repeat(11) + "z";
        let l24 = "y".repeat(24);
        let text = format!("{l23}\n{l24}\nab\n\n{l23}\nc");
        let batch = OutputBatch::new("p".into(), Stream::Stdout, text.into_bytes());
        let got: Vec<Line> = batch.lines().collect();
        assert_eq!(got, [&l23[..], &l24, "ab", "", &l23, "c"]);
        let inline: Vec<bool> = got
            .iter()
            .map(|l| matches!(l.0, LineRepr::Inline(_)))
            .collect();
        assert_eq!(inline, [true, false, true, true, true, true]);
        assert_eq!(Line::from(l23.clone()), l23);
        assert_eq!(Line::from(String::new()), "");
    }

    proptest::proptest! {
        /// Walking a batch with `event_at` (the subscriber's cursor, with its short-line fast
        /// path) gives exactly the lines of `lines()`: same text, same cut, same count.
        #[test]
        fn event_at_walks_the_lines_exactly(
            pieces in proptest::collection::vec(
                proptest::prop_oneof![
                    Just(b"\n".to_vec()),
                    Just(b"\r\n".to_vec()),
                    Just(b"\r".to_vec()),
                    Just("é".as_bytes().to_vec()),
                    Just(vec![0xff]),
                    proptest::collection::vec(b'a'..=b'z', 0..40),
                ],
                0..60,
            ),
        ) {
            let data = pieces.concat();
            let batch = OutputBatch::new("proc-1".into(), Stream::Stdout, data);
            let expected: Vec<Line> = batch.lines().collect();
            let mut got = Vec::new();
            let mut pos = 0;
            while let Some(event) = batch.event_at(&mut pos) {
                match event {
                    ProcessEvent::Output { id, line, stream } => {
                        proptest::prop_assert_eq!(id, "proc-1");
                        proptest::prop_assert_eq!(stream, Stream::Stdout);
                        got.push(line);
                    }
                    other => proptest::prop_assert!(false, "not output: {other:?}"),
                }
            }
            proptest::prop_assert_eq!(pos, batch.text().len());
            proptest::prop_assert_eq!(got.len() as u64, batch.line_count());
            proptest::prop_assert_eq!(got, expected);
        }
    }

    #[test]
    fn event_at_takes_short_lines_whole_and_long_ones_shared() {
        // Lines of 0..=30 bytes, each followed by more text (the fast path), then the same at
        // the end of a batch (the usual path).
        for len in 0..=30 {
            let line = "x".repeat(len);
            for ending in ["\n", "\r\n"] {
                let text = format!("{line}{ending}{}", "y".repeat(40));
                let batch = OutputBatch::new("p".into(), Stream::Stdout, text.into_bytes());
                let mut pos = 0;
                let Some(ProcessEvent::Output { line: got, .. }) = batch.event_at(&mut pos) else {
                    panic!("no line");
                };
                assert_eq!(got, line);
                assert_eq!(pos, len + ending.len());
                assert_eq!(matches!(got.0, LineRepr::Inline(_)), len <= 23, "{len}");
            }
        }
    }

    #[test]
    fn events_carry_lossy_lines() {
        let batch = OutputBatch::new("proc-3".into(), Stream::Stderr, b"ok\n\xff\n".to_vec());
        let evs: Vec<_> = batch.events().collect();
        assert_eq!(evs.len(), 2);
        assert_eq!(
            evs[1],
            ProcessEvent::Output {
                id: "proc-3".into(),
                line: "\u{fffd}".into(),
                stream: Stream::Stderr
            }
        );
        assert!(!evs[0].is_lifecycle());
    }

    #[test]
    fn events_serialise_tagged() {
        let ev = ProcessEvent::Exited {
            id: "proc-1".into(),
            exit_code: Some(0),
            duration: Duration::from_millis(250),
            error: None,
        };
        let json = serde_json::to_value(&ev).unwrap();
        assert_eq!(json["type"], "exited");
        assert_eq!(json["duration"], 0.25);
        let back: ProcessEvent = serde_json::from_value(json).unwrap();
        assert_eq!(back, ev);
        let killed = ProcessEvent::Killed {
            id: "p".into(),
            signal: Signal::Kill,
            timed_out: true,
        };
        assert_eq!(
            serde_json::to_string(&killed).unwrap(),
            r#"{"type":"killed","id":"p","signal":"SIGKILL","timed_out":true}"#
        );
    }
}
