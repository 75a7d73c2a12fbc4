//! The shared bucket store: one Lua script per batch of requests on Redis.
//!
//! The script reads every bucket of the batch, settles each with Redis's own clock
//! (`TIME`, so replicas' clocks do not matter), decides each request all-or-nothing exactly
//! like `ratelimit::decide`, in arrival order, and writes back the charged buckets with
//! `SET ... PX` (every key expires once it would be full again, so idle clients leave nothing
//! behind). Redis runs a script atomically: concurrent requests from any number of replicas
//! serialise on it, which is what makes "exactly `burst` of N simultaneous requests" hold
//! across replicas. On a leased policy a bucket may be asked for more than one token, and
//! given back an expired lease's unspent tokens first (`ratelimit::lease`).
//!
//! Batching (group commit): a request's charge goes to Redis at once when fewer than
//! [`MAX_IN_FLIGHT`] calls are in flight; requests arriving meanwhile queue, and the first of
//! them to be handed the turn sends every queued charge in one script. At low load every
//! request is its own batch (one round trip, as before); under load a script call, its
//! command parsing and one `GET`/`SET` per bucket serve many requests (the bench's 64
//! connections: one limiter script per request cost more CPU than the rest of a passthrough).
//! Requests in a batch are decided one after the other, as separate scripts would decide
//! them: a batch changes no outcome. A request that waited its whole `store.timeout` in the
//! queue is decided as `on_store_error` says, like a call that timed out (its charge may still
//! reach Redis with the batch it queued for, as a timed-out call's may).
//!
//! A call is `EVALSHA` through redis-rs's `Script`, which loads the script and retries once if
//! Redis answers `NOSCRIPT` (after a restart or `SCRIPT FLUSH`).
//!
//! Keys: `<store.key_prefix>rl:{<identity>}:<policy>`, e.g. `rampart:rl:{ip:203.0.113.9}:api`.
//! The braces are a Redis Cluster hash tag: all of one identity's buckets share a slot, so
//! the common case (every policy keyed by client address) is one script on one node. Under
//! `store.cluster`, requests are not batched (a batch's keys would span slots), and a request
//! whose policies use different keys (an address and an API key, say) runs one script per
//! identity, in turn; each is atomic, but the all-or-nothing rule then holds per identity
//! only. On a single node all buckets go in one script whatever their keys.
//!
//! Invariant: arithmetic in the script is on integers below 2^53 (validated), so Lua's doubles
//! are exact; state is written as `"<debt>:<stamp>"` with `%.0f` (Lua's `tostring` would
//! round 16-digit microsecond stamps).

use std::sync::{Arc, Mutex, MutexGuard};

use redis::Script;
use tokio::sync::oneshot;

use super::lease::{Ask, Granted};
use super::{Charge, Charged, Policy};
use crate::redis::{Error, Redis};

/// Script calls in flight at once (single node); further requests queue and go together.
const MAX_IN_FLIGHT: usize = 2;

/// ARGV[1]: the number of requests. Then per request: its number of buckets, and six
/// arguments per bucket (cost, refill, capacity, enforce 1/0, tokens to take, tokens given
/// back); its buckets are the next KEYS. Given-back tokens are returned first (never below an
/// empty debt). More than one token is taken only while the bucket keeps half its capacity
/// after it (`ratelimit::lease`); otherwise one. Returns four integers per bucket, in order:
/// admitted, charged, debt after the request, tokens taken.
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local debt, stamp, refill_of, written = {}, {}, {}, {}
local function settle(key, refill)
  if debt[key] ~= nil then return end
  local d, s = 0, now
  local v = redis.call('GET', key)
  if v then
    local vd, vs = string.match(v, '^(%d+):(%d+)$')
    if vd then
      d, s = tonumber(vd), tonumber(vs)
      if now > s then
        local gain = (now - s) * refill
        if gain >= d then d = 0 else d = d - gain end
        s = now
      end
    end
  end
  debt[key], stamp[key] = d, s
end
local function touch(key, refill)
  if refill_of[key] == nil then written[#written + 1] = key end
  refill_of[key] = refill
end
local out = {}
local a, k = 2, 1
for r = 1, tonumber(ARGV[1]) do
  local n = tonumber(ARGV[a])
  a = a + 1
  local ok, take, pass = {}, {}, true
  for i = 0, n - 1 do
    local j = a + i * 6
    local key = KEYS[k + i]
    local cost, refill, cap = tonumber(ARGV[j]), tonumber(ARGV[j + 1]), tonumber(ARGV[j + 2])
    settle(key, refill)
    local back = tonumber(ARGV[j + 5]) * cost
    if back > 0 then
      if back >= debt[key] then debt[key] = 0 else debt[key] = debt[key] - back end
      touch(key, refill)
    end
    take[i] = tonumber(ARGV[j + 4])
    if take[i] > 1 and debt[key] + take[i] * cost > cap / 2 then take[i] = 1 end
    ok[i] = debt[key] + take[i] * cost <= cap
    if ARGV[j + 3] == '1' and not ok[i] then pass = false end
  end
  for i = 0, n - 1 do
    local j = a + i * 6
    local key = KEYS[k + i]
    local charge = ok[i] and (pass or ARGV[j + 3] ~= '1')
    if charge then
      debt[key] = debt[key] + take[i] * tonumber(ARGV[j])
      touch(key, tonumber(ARGV[j + 1]))
    end
    out[#out + 1] = ok[i] and 1 or 0
    out[#out + 1] = charge and 1 or 0
    out[#out + 1] = debt[key]
    out[#out + 1] = charge and take[i] or 0
  end
  a = a + n * 6
  k = k + n
end
for _, key in ipairs(written) do
  local ttl = math.ceil(debt[key] / refill_of[key] / 1000) + 1000
  redis.call('SET', key, string.format('%.0f:%.0f', debt[key], stamp[key]), 'PX', ttl)
end
return out
";

/// One request's buckets: their keys and script arguments (cost, refill, capacity, enforce,
/// take, refund).
struct Buckets {
    keys: Vec<String>,
    args: Vec<[u64; 6]>,
}

/// A queued request: its buckets, and where its outcome (or its turn to send) goes.
struct Waiting {
    buckets: Buckets,
    reply: oneshot::Sender<Message>,
}

enum Message {
    Decided(Result<Vec<Granted>, Error>),
    /// Your turn: send your buckets (`own`) after those queued before you (`earlier`), in the
    /// call slot `turn`.
    Send {
        turn: Turn,
        earlier: Vec<Waiting>,
        own: Buckets,
    },
}

#[derive(Default)]
struct Queue {
    in_flight: usize,
    waiting: Vec<Waiting>,
}

type SharedQueue = Arc<Mutex<Queue>>;

fn lock(queue: &SharedQueue) -> MutexGuard<'_, Queue> {
    // Two plain fields: a panic elsewhere cannot leave them inconsistent.
    queue.lock().unwrap_or_else(|e| e.into_inner())
}

/// A call slot, held by the request sending a batch and given up when that ends, finished or
/// cancelled (or when a handed-over turn is dropped unused): the requests queued meanwhile get
/// it (the latest arrival sends them all, so each is decided by one script); with none queued
/// the slot is free.
struct Turn(Option<SharedQueue>);

impl Drop for Turn {
    fn drop(&mut self) {
        let Some(shared) = self.0.take() else {
            return;
        };
        let mut queue = lock(&shared);
        let mut waiting = std::mem::take(&mut queue.waiting);
        while let Some(Waiting { buckets, reply }) = waiting.pop() {
            let handed = Message::Send {
                turn: Turn(Some(shared.clone())),
                earlier: waiting,
                own: buckets,
            };
            match reply.send(handed) {
                // The slot goes with the turn.
                Ok(()) => return,
                // That request gave up waiting: the one before it is asked. (The turn it
                // was not given is emptied first: its drop must not hand the slot on.)
                Err(Message::Send {
                    mut turn, earlier, ..
                }) => {
                    turn.0 = None;
                    waiting = earlier;
                }
                Err(Message::Decided(_)) => break,
            }
        }
        queue.in_flight = queue.in_flight.saturating_sub(1);
    }
}

pub struct RedisBuckets {
    redis: Arc<Redis>,
    script: Script,
    cluster: bool,
    queue: SharedQueue,
}

impl RedisBuckets {
    pub fn new(redis: Arc<Redis>, cluster: bool) -> Self {
        Self {
            redis,
            script: Script::new(SCRIPT),
            cluster,
            queue: SharedQueue::default(),
        }
    }

    /// Whether Redis is in an outage (not merely slow on one call).
    pub fn is_down(&self) -> bool {
        self.redis.is_down()
    }

    /// See [`Redis::should_try`].
    pub fn should_try(&self) -> bool {
        self.redis.should_try()
    }

    /// Charge one request; `policies[i]` is the policy of `charges[i]`, `asks[i]` what to ask
    /// of its bucket.
    pub async fn charge(
        &self,
        policies: &[&Policy],
        charges: &[Charge],
        asks: &[Ask],
    ) -> Result<Vec<Granted>, Error> {
        if !self.cluster {
            let all: Vec<usize> = (0..charges.len()).collect();
            return self
                .batched(self.buckets(policies, charges, asks, &all))
                .await;
        }
        let none = Charged {
            admitted: true,
            charged: false,
            debt: 0,
        };
        let mut out = vec![(none, 0); charges.len()];
        let mut done = vec![false; charges.len()];
        for i in 0..charges.len() {
            if done[i] {
                continue;
            }
            let group: Vec<usize> = (i..charges.len())
                .filter(|&j| charges[j].identity == charges[i].identity)
                .collect();
            let decided = self.run(policies, charges, asks, &group).await?;
            for (j, charged) in group.iter().zip(decided) {
                out[*j] = charged;
                done[*j] = true;
            }
        }
        Ok(out)
    }

    /// The buckets `which` of one request.
    fn buckets(
        &self,
        policies: &[&Policy],
        charges: &[Charge],
        asks: &[Ask],
        which: &[usize],
    ) -> Buckets {
        let keys = which
            .iter()
            .map(|&i| {
                let key = format!("rl:{{{}}}:{}", charges[i].identity, policies[i].name);
                self.redis.key(&key)
            })
            .collect();
        let args = which
            .iter()
            .map(|&i| {
                let (p, ask) = (policies[i], asks.get(i).copied().unwrap_or(Ask::ONE));
                let enforce = u64::from(!p.report_only);
                [p.cost, p.refill, p.capacity, enforce, ask.take, ask.refund]
            })
            .collect();
        Buckets { keys, args }
    }

    /// One script over the buckets `which` (cluster: never batched).
    async fn run(
        &self,
        policies: &[&Policy],
        charges: &[Charge],
        asks: &[Ask],
        which: &[usize],
    ) -> Result<Vec<Granted>, Error> {
        let buckets = self.buckets(policies, charges, asks, which);
        let mut decided = self.call(&[&buckets]).await;
        decided.pop().unwrap_or_else(|| Err(shape_error()))
    }

    /// Send now when a call may start, else queue until decided or handed the turn, at most
    /// `store.timeout` in all.
    async fn batched(&self, buckets: Buckets) -> Result<Vec<Granted>, Error> {
        let queued = {
            let mut queue = lock(&self.queue);
            if queue.in_flight < MAX_IN_FLIGHT {
                queue.in_flight += 1;
                Err(buckets)
            } else {
                let (reply, rx) = oneshot::channel();
                queue.waiting.push(Waiting { buckets, reply });
                Ok(rx)
            }
        };
        let rx = match queued {
            Ok(rx) => rx,
            Err(buckets) => {
                let turn = Turn(Some(self.queue.clone()));
                return self.send(turn, Vec::new(), buckets).await;
            }
        };
        let timeout = self.redis.timeout();
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Message::Decided(decided))) => decided,
            Ok(Ok(Message::Send { turn, earlier, own })) => self.send(turn, earlier, own).await,
            // Its batch was dropped (the request sending it was cancelled).
            Ok(Err(_)) => Err(Error::Redis(redis::RedisError::from((
                redis::ErrorKind::IoError,
                "ratelimit batch dropped before it was answered",
            )))),
            Err(_) => Err(Error::Timeout(timeout)),
        }
    }

    /// Send `own` after `earlier` as one script, hand their outcomes out; the slot (`turn`)
    /// passes on when this returns.
    async fn send(
        &self,
        turn: Turn,
        earlier: Vec<Waiting>,
        own: Buckets,
    ) -> Result<Vec<Granted>, Error> {
        let mut batch: Vec<&Buckets> = earlier.iter().map(|w| &w.buckets).collect();
        batch.push(&own);
        let mut decided = self.call(&batch).await;
        let mine = decided.pop().unwrap_or_else(|| Err(shape_error()));
        for (waiting, outcome) in earlier.into_iter().zip(decided) {
            // A request that gave up waiting is simply gone.
            let _ = waiting.reply.send(Message::Decided(outcome));
        }
        drop(turn);
        mine
    }

    /// One script over `batch`: each request's outcome, in order.
    async fn call(&self, batch: &[&Buckets]) -> Vec<Result<Vec<Granted>, Error>> {
        let mut invocation = self.script.prepare_invoke();
        invocation.arg(batch.len());
        for buckets in batch {
            invocation.arg(buckets.keys.len());
            for (key, args) in buckets.keys.iter().zip(&buckets.args) {
                invocation.key(key).arg(&args[..]);
            }
        }
        let flat: Result<Vec<i64>, Error> = self
            .redis
            .call("ratelimit", |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await;
        let total: usize = batch.iter().map(|b| b.keys.len()).sum();
        let flat = match flat {
            Ok(flat) if flat.len() == total * 4 => flat,
            Ok(_) => return batch.iter().map(|_| Err(shape_error())).collect(),
            Err(e) => return batch.iter().map(|_| Err(e.duplicate())).collect(),
        };
        let mut rows = flat.chunks_exact(4).map(|c| {
            let charged = Charged {
                admitted: c[0] == 1,
                charged: c[1] == 1,
                debt: u64::try_from(c[2]).unwrap_or(0),
            };
            (charged, u64::try_from(c[3]).unwrap_or(0))
        });
        batch
            .iter()
            .map(|b| Ok(rows.by_ref().take(b.keys.len()).collect()))
            .collect()
    }
}

fn shape_error() -> Error {
    Error::Redis(redis::RedisError::from((
        redis::ErrorKind::TypeError,
        "ratelimit script returned an unexpected shape",
    )))
}
