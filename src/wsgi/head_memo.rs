//! A per-thread memo of the response-head pieces apps pass to
//! `start_response`: the last status line, and each header name with the
//! last value it had.
//!
//! Apps pass the same literals on nearly every request (`"200 OK"`,
//! `"Content-Type"`, `"text/html; charset=utf-8"`), so a request whose
//! pieces match skips validating and converting them again and shares the
//! converted value instead of allocating a copy. That was about a third of
//! the cost of `start_response`.
//!
//! Soundness of the shortcuts:
//! - Names are matched by object identity. The memo holds a reference to
//!   each name it keeps, so no other object can appear at that address, and
//!   a Python `str` never changes its text.
//! - Values and statuses are matched by text: the same text always
//!   validates and converts the same way. Only ASCII values are kept, so
//!   equal bytes mean equal text (a non-ASCII value's UTF-8 could otherwise
//!   equal another value's latin-1 bytes).

use std::cell::RefCell;

use http::{HeaderName, HeaderValue};
use pyo3::prelude::*;
use pyo3::types::PyString;

use super::start_response::{Status, parse_header, parse_status};

/// Header names kept per thread; an app that sends more distinct names
/// than this has the rest checked on every request, as before.
const NAMES: usize = 32;

struct Known {
    name: Py<PyString>,
    header: HeaderName,
    /// The last value, when it was ASCII.
    value: Option<HeaderValue>,
}

#[derive(Default)]
pub struct HeadMemo {
    status: Option<(String, Status)>,
    known: Vec<Known>,
}

thread_local! {
    static MEMO: RefCell<HeadMemo> = RefCell::new(HeadMemo::default());
}

/// Runs `f` with this thread's memo. `f` must not run Python code, which
/// could call `start_response` again and find the memo borrowed.
pub fn with<R>(f: impl FnOnce(&mut HeadMemo) -> R) -> R {
    MEMO.with_borrow_mut(f)
}

impl HeadMemo {
    /// [`parse_status`], remembered.
    pub fn status(&mut self, text: &str) -> Result<Status, String> {
        if let Some((seen, status)) = &self.status
            && seen == text
        {
            return Ok(status.clone());
        }
        let status = parse_status(text)?;
        self.status = Some((text.to_owned(), status.clone()));
        Ok(status)
    }

    /// [`parse_header`], remembered. `Err` is the message for the app.
    pub fn header(
        &mut self,
        name: &Bound<'_, PyString>,
        value: &str,
    ) -> PyResult<Result<(HeaderName, HeaderValue), String>> {
        let slot = self
            .known
            .iter()
            .position(|k| k.name.as_ptr() == name.as_ptr());
        if let Some(known) = slot.map(|i| &self.known[i])
            && let Some(seen) = &known.value
            && seen.as_bytes() == value.as_bytes()
        {
            return Ok(Ok((known.header.clone(), seen.clone())));
        }
        let (header, converted) = match parse_header(&name.to_cow()?, value) {
            Ok(pair) => pair,
            Err(message) => return Ok(Err(message)),
        };
        let keep = converted.as_bytes().is_ascii().then(|| converted.clone());
        match slot {
            Some(i) => self.known[i].value = keep,
            None if self.known.len() < NAMES => self.known.push(Known {
                name: name.clone().unbind(),
                header: header.clone(),
                value: keep,
            }),
            None => {}
        }
        Ok(Ok((header, converted)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(
        memo: &mut HeadMemo,
        name: &Bound<'_, PyString>,
        value: &str,
    ) -> Result<(String, Vec<u8>), String> {
        memo.header(name, value)
            .expect("a str")
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
    }

    #[test]
    fn a_remembered_header_converts_as_a_fresh_one_does() {
        Python::initialize();
        Python::attach(|py| {
            let mut memo = HeadMemo::default();
            let name = PyString::new(py, "Content-Type");
            let fresh = header(&mut memo, &name, "text/plain");
            assert_eq!(fresh, Ok(("content-type".into(), b"text/plain".to_vec())));
            assert_eq!(memo.known.len(), 1);
            // The same name object: remembered, and the answer is the same.
            assert_eq!(header(&mut memo, &name, "text/plain"), fresh);
            // A new value under the same name is checked and replaces it.
            let html = header(&mut memo, &name, "text/html");
            assert_eq!(html, Ok(("content-type".into(), b"text/html".to_vec())));
            assert_eq!(memo.known.len(), 1);
            // A bad value is refused even under a remembered name.
            assert!(header(&mut memo, &name, "a\r\nb").is_err());
            assert_eq!(header(&mut memo, &name, "text/html"), html);
        });
    }

    #[test]
    fn non_ascii_values_are_converted_every_time() {
        Python::initialize();
        Python::attach(|py| {
            let mut memo = HeadMemo::default();
            let name = PyString::new(py, "X-Word");
            // "é" as latin-1 is 0xE9; "Ã©" is 0xC3 0xA9, which is also the
            // UTF-8 of "é": keeping the first must not answer the second.
            assert_eq!(
                header(&mut memo, &name, "\u{c3}\u{a9}").map(|h| h.1),
                Ok(vec![0xc3, 0xa9])
            );
            assert_eq!(
                header(&mut memo, &name, "\u{e9}").map(|h| h.1),
                Ok(vec![0xe9])
            );
            assert!(memo.known[0].value.is_none());
        });
    }

    #[test]
    fn another_name_with_the_same_text_is_still_checked_by_its_own_object() {
        Python::initialize();
        Python::attach(|py| {
            let mut memo = HeadMemo::default();
            let first = PyString::new(py, "X-A");
            let second = PyString::new(py, "X-A");
            assert!(!first.is(&second));
            header(&mut memo, &first, "1").expect("valid");
            header(&mut memo, &second, "1").expect("valid");
            assert_eq!(memo.known.len(), 2);
            assert!(header(&mut memo, &second, "bad\n").is_err());
        });
    }

    #[test]
    fn hop_by_hop_names_are_never_remembered() {
        Python::initialize();
        Python::attach(|py| {
            let mut memo = HeadMemo::default();
            let name = PyString::new(py, "Connection");
            for _ in 0..2 {
                assert!(header(&mut memo, &name, "close").is_err());
            }
            assert!(memo.known.is_empty());
        });
    }

    #[test]
    fn the_status_is_remembered_by_text() {
        let mut memo = HeadMemo::default();
        let ok = memo.status("200 OK").expect("valid");
        assert_eq!(memo.status("200 OK"), Ok(ok));
        assert_eq!(
            memo.status("404 Gone Fishing").map(|s| s.reason),
            Ok(Some("Gone Fishing".to_owned()))
        );
        assert!(memo.status("20 OK").is_err());
        assert_eq!(memo.status("404 Gone Fishing").map(|s| s.code), Ok(404));
    }
}
