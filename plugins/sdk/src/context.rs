//! What a plugin invocation can reach besides its input: configuration,
//! outbound HTTP and the clock.

use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::Config;
use crate::http::{HttpClient, HttpError, Request, Response};

/// The environment of one plugin invocation, passed to every trait method.
///
/// In a component the SDK builds it from the host: the configuration from
/// the `config` import, HTTP through `wasi:http` (connectors only), the
/// clock from WASI. In unit tests build it yourself:
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// use busbar_sdk::{Config, Context, testing::FakeHttp};
///
/// let http = FakeHttp::new();
/// let cx = Context::new(Config::from_pairs([("url", "https://example.com")]))
///     .with_http(http.clone())
///     .with_time(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
/// assert_eq!(cx.config().get("url"), Some("https://example.com"));
/// assert_eq!(cx.unix_time(), 1_700_000_000);
/// ```
#[derive(Clone)]
pub struct Context {
    config: Config,
    http: Rc<dyn HttpClient>,
    /// A fixed time for tests; `None` reads the system clock.
    time: Option<SystemTime>,
}

impl Context {
    /// A context with `config`, no HTTP client (every request fails with
    /// [`HttpError::Denied`]) and the system clock.
    ///
    /// ```
    /// let cx = busbar_sdk::Context::new(busbar_sdk::Config::default());
    /// assert!(cx.config().is_empty());
    /// ```
    pub fn new(config: Config) -> Self {
        Self {
            config,
            http: Rc::new(NoHttp),
            time: None,
        }
    }

    /// This context with `http` as its HTTP client (a
    /// [`FakeHttp`](crate::testing::FakeHttp) in tests).
    ///
    /// ```
    /// let cx = busbar_sdk::Context::default().with_http(busbar_sdk::testing::FakeHttp::new());
    /// # let _ = cx;
    /// ```
    #[must_use]
    pub fn with_http(mut self, http: impl HttpClient + 'static) -> Self {
        self.http = Rc::new(http);
        self
    }

    /// This context with its clock stopped at `time`.
    ///
    /// ```
    /// use std::time::UNIX_EPOCH;
    /// let cx = busbar_sdk::Context::default().with_time(UNIX_EPOCH);
    /// assert_eq!(cx.now(), UNIX_EPOCH);
    /// ```
    #[must_use]
    pub fn with_time(mut self, time: SystemTime) -> Self {
        self.time = Some(time);
        self
    }

    /// The plugin's configuration.
    ///
    /// ```
    /// let cx = busbar_sdk::Context::new(busbar_sdk::Config::from_pairs([("k", "v")]));
    /// assert_eq!(cx.config().get("k"), Some("v"));
    /// ```
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The HTTP client. In a connector component it sends requests through
    /// `wasi:http`, to the hosts the target allows; filters and transformers
    /// cannot make requests.
    ///
    /// ```
    /// use busbar_sdk::http::{HttpError, Request};
    /// let cx = busbar_sdk::Context::default();
    /// let err = cx.http().send(&Request::get("https://example.com")).unwrap_err();
    /// assert!(matches!(err, HttpError::Denied(_)));
    /// ```
    pub fn http(&self) -> &dyn HttpClient {
        self.http.as_ref()
    }

    /// The current time (fixed in tests by [`Context::with_time`]).
    ///
    /// ```
    /// assert!(busbar_sdk::Context::default().now() > std::time::UNIX_EPOCH);
    /// ```
    pub fn now(&self) -> SystemTime {
        self.time.unwrap_or_else(SystemTime::now)
    }

    /// The current time in whole seconds since the Unix epoch.
    ///
    /// ```
    /// assert!(busbar_sdk::Context::default().unix_time() > 1_600_000_000);
    /// ```
    pub fn unix_time(&self) -> u64 {
        self.now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs()
    }
}

impl Default for Context {
    fn default() -> Self {
        Self::new(Config::default())
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .field("time", &self.time)
            .finish_non_exhaustive()
    }
}

/// The client of a context that may not make requests.
struct NoHttp;

impl HttpClient for NoHttp {
    fn send(&self, request: &Request) -> Result<Response, HttpError> {
        Err(HttpError::Denied(format!(
            "this plugin cannot make HTTP requests (to {})",
            request.url
        )))
    }
}
