//! The lifespan protocol: startup before listening, shutdown after draining.

use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use amphi_core::plumbing::{EventSource, MessageSink};
use amphi_core::{
    AsyncHandler, Error, ErrorKind, Event, LifespanScope, Message, Receiver, Scope, Sender, State,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::ServeError;

struct ChannelSource(mpsc::UnboundedReceiver<Event>);

impl EventSource for ChannelSource {
    fn poll_event(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<Event, Error>> {
        match self.0.poll_recv(cx) {
            Poll::Ready(Some(e)) => Poll::Ready(Ok(e)),
            Poll::Ready(None) => Poll::Ready(Err(Error::new(ErrorKind::Cancelled)
                .with_message("the server dropped the lifespan scope"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

struct ChannelSink(mpsc::UnboundedSender<Message>);

impl MessageSink for ChannelSink {
    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Ok(()))
    }

    fn start_send(&mut self, message: Message) -> Result<(), Error> {
        // The server may have stopped listening (it gave up waiting); the message is moot then.
        let _ = self.0.send(message);
        Ok(())
    }
}

/// The lifespan scope of one handler that took part in startup.
struct Running {
    prefix: String,
    events: mpsc::UnboundedSender<Event>,
    messages: mpsc::UnboundedReceiver<Message>,
    task: JoinHandle<Result<(), Error>>,
}

/// The handlers whose lifespan startup completed, waiting for shutdown.
pub(crate) struct Lifespans {
    running: Vec<Running>,
}

impl std::fmt::Debug for Lifespans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifespans")
            .field("running", &self.running.len())
            .finish()
    }
}

/// What one handler answered to `lifespan.startup`.
enum Started {
    Yes(Running),
    /// The handler does not speak lifespan.
    Unsupported,
    Failed(String),
}

async fn start_one(prefix: &str, handler: Arc<dyn AsyncHandler>, state: State) -> Started {
    let (event_tx, event_rx) = mpsc::unbounded_channel();
    let (message_tx, mut message_rx) = mpsc::unbounded_channel();
    let scope = Scope::Lifespan(LifespanScope::new(state));
    let receive = Receiver::new(ChannelSource(event_rx));
    let send = Sender::lifespan(ChannelSink(message_tx));
    let mut task = tokio::spawn(async move { handler.call(scope, receive, send).await });
    let _ = event_tx.send(Event::Startup);
    tokio::select! {
        biased;
        message = message_rx.recv() => match message {
            Some(Message::StartupComplete) => Started::Yes(Running {
                prefix: prefix.to_owned(),
                events: event_tx,
                messages: message_rx,
                task,
            }),
            Some(Message::StartupFailed { message }) => {
                task.abort();
                Started::Failed(message)
            }
            // The sender only lets startup replies through first, and a closed channel means
            // the handler finished: see what it returned.
            _ => finished(&mut task).await,
        },
        joined = &mut task => {
            // The task ended; look at the messages it may have sent just before. Its result is
            // `joined`: the handle must not be polled again (tokio panics if it is).
            match message_rx.try_recv() {
                Ok(Message::StartupComplete) => {
                    tracing::warn!(prefix, "lifespan handler returned right after startup.complete; it will get no shutdown event");
                    Started::Unsupported
                }
                Ok(Message::StartupFailed { message }) => Started::Failed(message),
                _ => outcome(joined),
            }
        }
    }
}

async fn finished(task: &mut JoinHandle<Result<(), Error>>) -> Started {
    outcome(task.await)
}

/// What a lifespan task that ended without a startup reply means.
fn outcome(joined: Result<Result<(), Error>, tokio::task::JoinError>) -> Started {
    match joined {
        Ok(Ok(())) => Started::Unsupported,
        Ok(Err(e)) => {
            // ASGI: a handler that raises in the lifespan scope does not support it.
            tracing::warn!(error = %e, "lifespan scope failed; going on without lifespan for this handler");
            Started::Unsupported
        }
        Err(join) if join.is_panic() => {
            let payload = join.into_panic();
            Started::Failed(Error::from_panic(&*payload).to_string())
        }
        Err(_) => Started::Unsupported,
    }
}

impl Lifespans {
    /// Runs `lifespan.startup` for each handler in turn.
    ///
    /// # Errors
    ///
    /// When a handler sends `lifespan.startup.failed` or panics; those that had started get
    /// their shutdown first.
    pub(crate) async fn startup(
        handlers: Vec<(String, Arc<dyn AsyncHandler>)>,
        state: &State,
        shutdown_timeout: Duration,
    ) -> Result<Lifespans, ServeError> {
        let mut started = Lifespans {
            running: Vec::new(),
        };
        for (prefix, handler) in handlers {
            let shown = crate::app::shown(&prefix);
            match start_one(shown, handler, state.clone()).await {
                Started::Yes(r) => started.running.push(r),
                Started::Unsupported => {}
                Started::Failed(message) => {
                    started.shutdown(shutdown_timeout).await;
                    return Err(ServeError::startup(format!(
                        "handler mounted at {shown}: {message}"
                    )));
                }
            }
        }
        Ok(started)
    }

    /// Sends `lifespan.shutdown` to each started handler, in reverse order of startup, and
    /// waits up to `timeout` for each to answer.
    pub(crate) async fn shutdown(self, timeout: Duration) {
        for mut r in self.running.into_iter().rev() {
            let _ = r.events.send(Event::Shutdown);
            let answer = tokio::time::timeout(timeout, async {
                loop {
                    match r.messages.recv().await {
                        Some(Message::ShutdownComplete) => return Ok(()),
                        Some(Message::ShutdownFailed { message }) => return Err(message),
                        Some(_) => continue,
                        None => return Ok(()),
                    }
                }
            })
            .await;
            match answer {
                Ok(Ok(())) => {}
                Ok(Err(message)) => {
                    tracing::error!(prefix = r.prefix, message, "lifespan shutdown failed")
                }
                Err(_) => tracing::warn!(
                    prefix = r.prefix,
                    "lifespan shutdown did not answer within {timeout:?}; abandoning it"
                ),
            }
            if tokio::time::timeout(Duration::from_millis(100), &mut r.task)
                .await
                .is_err()
            {
                r.task.abort();
            }
        }
    }
}
