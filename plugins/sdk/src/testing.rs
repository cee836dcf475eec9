//! Fakes for unit-testing plugin logic natively with `cargo test`: a fake
//! HTTP client and the log messages the plugin wrote.
//!
//! ```
//! use busbar_sdk::prelude::*;
//! use busbar_sdk::testing::{FakeHttp, take_logs};
//!
//! let http = FakeHttp::new();
//! http.respond(Response::new(500));
//! let cx = Context::default().with_http(http.clone());
//!
//! busbar_sdk::info!("sending");
//! let response = cx.http().send(&Request::post("https://example.com")).unwrap();
//! assert_eq!(response.status, 500);
//! assert_eq!(http.requests().len(), 1);
//! assert_eq!(take_logs()[0].1, "sending");
//! ```

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use crate::http::{HttpClient, HttpError, Request, Response};
use crate::log::Level;

thread_local! {
    static LOGS: RefCell<Vec<(Level, String)>> = const { RefCell::new(Vec::new()) };
}

/// Natively, [`crate::log::log`] lands here.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn record_log(level: Level, message: &str) {
    LOGS.with(|logs| logs.borrow_mut().push((level, message.to_owned())));
}

/// Returns and clears the messages logged on this thread (each test runs on
/// its own thread, so tests do not see each other's logs).
///
/// ```
/// busbar_sdk::warn!("careful");
/// let logs = busbar_sdk::testing::take_logs();
/// assert_eq!(logs, vec![(busbar_sdk::log::Level::Warn, "careful".to_owned())]);
/// assert!(busbar_sdk::testing::take_logs().is_empty());
/// ```
pub fn take_logs() -> Vec<(Level, String)> {
    LOGS.with(|logs| std::mem::take(&mut *logs.borrow_mut()))
}

type Handler = Box<dyn Fn(&Request) -> Result<Response, HttpError>>;

#[derive(Default)]
struct FakeState {
    requests: Vec<Request>,
    queued: VecDeque<Result<Response, HttpError>>,
    handler: Option<Handler>,
}

/// An [`HttpClient`] that records requests and answers from a queue of
/// canned outcomes, then from a handler, then with `200 OK`.
///
/// Clones share their state: keep one clone to inspect what the plugin sent
/// and give the other to [`Context::with_http`](crate::Context::with_http).
///
/// ```
/// use busbar_sdk::http::{HttpClient, HttpError, Request, Response};
/// use busbar_sdk::testing::FakeHttp;
///
/// let http = FakeHttp::new();
/// http.respond(Response::new(201));
/// http.fail(HttpError::Timeout("slow".into()));
/// let request = Request::get("https://x");
/// assert_eq!(http.send(&request).unwrap().status, 201);
/// assert!(http.send(&request).is_err());
/// assert_eq!(http.send(&request).unwrap().status, 200);
/// assert_eq!(http.requests().len(), 3);
/// ```
#[derive(Clone, Default)]
pub struct FakeHttp {
    state: Rc<RefCell<FakeState>>,
}

impl FakeHttp {
    /// A fake that answers `200 OK` to everything.
    ///
    /// ```
    /// assert!(busbar_sdk::testing::FakeHttp::new().requests().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `response` as the answer to the next unanswered request.
    ///
    /// ```
    /// busbar_sdk::testing::FakeHttp::new().respond(busbar_sdk::http::Response::new(404));
    /// ```
    pub fn respond(&self, response: Response) -> &Self {
        self.state.borrow_mut().queued.push_back(Ok(response));
        self
    }

    /// Queues `error` as the outcome of the next unanswered request.
    ///
    /// ```
    /// use busbar_sdk::http::HttpError;
    /// busbar_sdk::testing::FakeHttp::new().fail(HttpError::Denied("no".into()));
    /// ```
    pub fn fail(&self, error: HttpError) -> &Self {
        self.state.borrow_mut().queued.push_back(Err(error));
        self
    }

    /// Answers requests the queue does not with `handler`.
    ///
    /// ```
    /// use busbar_sdk::http::{HttpClient, Request, Response};
    /// let http = busbar_sdk::testing::FakeHttp::new()
    ///     .with_handler(|req| Ok(Response::new(if req.url.contains("ok") { 200 } else { 404 })));
    /// assert_eq!(http.send(&Request::get("https://x/missing")).unwrap().status, 404);
    /// ```
    #[must_use]
    pub fn with_handler(
        self,
        handler: impl Fn(&Request) -> Result<Response, HttpError> + 'static,
    ) -> Self {
        self.state.borrow_mut().handler = Some(Box::new(handler));
        self
    }

    /// Every request sent so far, in order.
    ///
    /// ```
    /// assert!(busbar_sdk::testing::FakeHttp::new().requests().is_empty());
    /// ```
    pub fn requests(&self) -> Vec<Request> {
        self.state.borrow().requests.clone()
    }
}

impl HttpClient for FakeHttp {
    fn send(&self, request: &Request) -> Result<Response, HttpError> {
        let mut state = self.state.borrow_mut();
        state.requests.push(request.clone());
        if let Some(outcome) = state.queued.pop_front() {
            return outcome;
        }
        match &state.handler {
            Some(handler) => handler(request),
            None => Ok(Response::new(200)),
        }
    }
}
