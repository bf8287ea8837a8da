//! The server's engine thread: it owns the model and a [`decode::Engine`], moves requests from
//! a bounded queue into it, steps it while anything runs, and hands each token to its request's
//! handler. A sequence whose handler is gone (client disconnected, stop string found) is cancelled
//! before the next step. What a step computes, and why a request's tokens are the same bits
//! whatever shares its steps, is the decode engine's (`crate::decode`).

pub use crate::decode::TokenLogprob;
use crate::decode::{self, Metrics, Request, SeqId};
use crate::model::InferenceModel;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use tokio::sync::mpsc::UnboundedSender;

/// What the engine tells a request's handler.
#[derive(Debug)]
pub enum Event {
    /// A generated token (an end-of-sequence id included, last), with its log-probability under
    /// the model and the `top` most likely alternatives when asked for.
    Token {
        id: u32,
        logprob: Option<TokenLogprob>,
    },
    /// The prompt's log-probabilities (asked for with `echo`), before the first token.
    PromptLogprobs(Vec<Option<TokenLogprob>>),
    /// No more tokens: the sequence ended (an end id or its length).
    Done,
    Failed(String),
}

pub struct Job {
    pub request: Request,
    pub events: UnboundedSender<Event>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    QueueFull(usize),
    /// What is wrong with the request (a KV cache over the budget, a token outside the vocabulary).
    Invalid(String),
    ShuttingDown,
}

#[derive(Clone, Debug)]
pub struct EngineOptions {
    pub decode: decode::EngineOptions,
    pub max_queue: usize,
}

struct Queue {
    jobs: VecDeque<Job>,
    shutdown: bool,
}

pub struct Engine {
    queue: Arc<(Mutex<Queue>, Condvar)>,
    pub metrics: Arc<Metrics>,
    opts: EngineOptions,
    /// Checks requests as the engine thread's engine will (same model, same options).
    checker: Arc<InferenceModel>,
    draft: Option<Arc<InferenceModel>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Engine {
    pub fn start(
        model: Arc<InferenceModel>,
        draft: Option<Arc<InferenceModel>>,
        opts: EngineOptions,
    ) -> anyhow::Result<Arc<Engine>> {
        // the options are checked here, before the thread starts
        decode::Engine::new(&model, draft.as_deref(), opts.decode.clone())?;
        let queue = Arc::new((Mutex::new(Queue { jobs: VecDeque::new(), shutdown: false }), Condvar::new()));
        let metrics = Arc::new(Metrics::default());
        let engine = Arc::new(Engine {
            queue: queue.clone(),
            metrics: metrics.clone(),
            opts: opts.clone(),
            checker: model.clone(),
            draft: draft.clone(),
            thread: Mutex::new(None),
        });
        let t = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || {
                let engine = decode::Engine::new(&model, draft.as_deref(), opts.decode)
                    .expect("checked above")
                    .with_metrics(metrics);
                run(engine, &queue)
            })
            .map_err(|e| anyhow::anyhow!("cannot start the engine thread: {e}"))?;
        *engine.thread.lock().unwrap() = Some(t);
        Ok(engine)
    }

    pub fn submit(&self, job: Job) -> Result<(), Refusal> {
        let check =
            decode::engine::check_request(&self.checker, self.draft.as_deref(), &self.opts.decode, &job.request);
        if let Err(e) = check {
            return Err(Refusal::Invalid(format!("{e:#}")));
        }
        let (lock, cv) = &*self.queue;
        let mut q = lock.lock().unwrap();
        if q.shutdown {
            return Err(Refusal::ShuttingDown);
        }
        if q.jobs.len() + self.metrics.waiting.load(Ordering::Relaxed) >= self.opts.max_queue {
            Metrics::add(&self.metrics.rejected_total, 1);
            return Err(Refusal::QueueFull(self.opts.max_queue));
        }
        q.jobs.push_back(job);
        cv.notify_one();
        Ok(())
    }

    /// Finishes what is queued and running, then stops the engine thread.
    pub fn shutdown(&self) {
        let (lock, cv) = &*self.queue;
        lock.lock().unwrap().shutdown = true;
        cv.notify_all();
        if let Some(t) = self.thread.lock().unwrap().take() {
            let _ = t.join();
        }
    }
}

fn run(mut engine: decode::Engine, queue: &(Mutex<Queue>, Condvar)) {
    let mut handlers: HashMap<SeqId, UnboundedSender<Event>> = HashMap::new();
    let mut events = vec![];
    loop {
        let jobs: Vec<Job> = {
            let (lock, cv) = queue;
            let mut q = lock.lock().unwrap();
            while engine.is_idle() && q.jobs.is_empty() && !q.shutdown {
                q = cv.wait(q).unwrap();
            }
            if engine.is_idle() && q.jobs.is_empty() && q.shutdown {
                return;
            }
            q.jobs.drain(..).collect()
        };
        for job in jobs.into_iter().filter(|j| !j.events.is_closed()) {
            match engine.add(job.request) {
                Ok(id) => {
                    handlers.insert(id, job.events);
                }
                Err(e) => {
                    let _ = job.events.send(Event::Failed(format!("{e:#}")));
                }
            }
        }
        // the sequences nobody listens to any more
        let gone: Vec<SeqId> = handlers.iter().filter(|(_, h)| h.is_closed()).map(|(&id, _)| id).collect();
        for id in gone {
            engine.cancel(id, &mut events);
        }
        if let Err(e) = engine.step(&mut events) {
            events.extend(handlers.keys().map(|&seq| decode::Event::Failed { seq, message: format!("{e:#}") }));
        }
        for ev in events.drain(..) {
            match ev {
                decode::Event::Token { seq, id, logprob } => {
                    if let Some(h) = handlers.get(&seq) {
                        let _ = h.send(Event::Token { id, logprob });
                    }
                }
                decode::Event::PromptLogprobs { seq, logprobs } => {
                    if let Some(h) = handlers.get(&seq) {
                        let _ = h.send(Event::PromptLogprobs(logprobs));
                    }
                }
                decode::Event::Finished { seq, .. } => {
                    if let Some(h) = handlers.remove(&seq) {
                        let _ = h.send(Event::Done);
                    }
                }
                decode::Event::Failed { seq, message } => {
                    if let Some(h) = handlers.remove(&seq) {
                        let _ = h.send(Event::Failed(message));
                    }
                }
            }
        }
    }
}
