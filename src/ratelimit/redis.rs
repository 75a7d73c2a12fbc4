//! The shared bucket store: one Lua script per request on Redis.
//!
//! The script reads every bucket of the request, settles each with Redis's own clock
//! (`TIME`, so replicas' clocks do not matter), decides all-or-nothing exactly like
//! `ratelimit::decide`, and writes back the charged buckets with `SET ... PX` (every key
//! expires once it would be full again, so idle clients leave nothing behind). Redis runs a
//! script atomically: concurrent requests from any number of replicas serialise on it, which
//! is what makes "exactly `burst` of N simultaneous requests" hold across replicas.
//!
//! One request costs one round trip: `EVALSHA` through redis-rs's `Script`, which loads the
//! script and retries once if Redis answers `NOSCRIPT` (after a restart or `SCRIPT FLUSH`).
//!
//! Keys: `<store.key_prefix>rl:{<identity>}:<policy>`, e.g. `rampart:rl:{ip:203.0.113.9}:api`.
//! The braces are a Redis Cluster hash tag: all of one identity's buckets share a slot, so
//! the common case (every policy keyed by client address) is one script on one node. Under
//! `store.cluster`, a request whose policies use different keys (an address and an API key,
//! say) runs one script per identity, in turn; each is atomic, but the all-or-nothing rule
//! then holds per identity only. On a single node all buckets go in one script whatever
//! their keys.
//!
//! Invariant: arithmetic in the script is on integers below 2^53 (validated), so Lua's doubles
//! are exact; state is written as `"<debt>:<stamp>"` with `%.0f` (Lua's `tostring` would
//! round 16-digit microsecond stamps).

use std::sync::Arc;

use redis::Script;

use super::{Charge, Charged, Policy};
use crate::redis::{Error, Redis};

/// KEYS[i]: one bucket per policy. ARGV, four per key: cost, refill, capacity, enforce (1/0).
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = #KEYS
local debt, stamp, ok = {}, {}, {}
local pass = true
for i = 1, n do
  local a = (i - 1) * 4
  local cost, refill, cap = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local d, s = 0, now
  local v = redis.call('GET', KEYS[i])
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
  debt[i], stamp[i] = d, s
  ok[i] = d + cost <= cap
  if ARGV[a + 4] == '1' and not ok[i] then pass = false end
end
local out = {}
for i = 1, n do
  local a = (i - 1) * 4
  local cost, refill = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local charge = ok[i] and (pass or ARGV[a + 4] ~= '1')
  if charge then
    debt[i] = debt[i] + cost
    local ttl = math.ceil(debt[i] / refill / 1000) + 1000
    redis.call('SET', KEYS[i], string.format('%.0f:%.0f', debt[i], stamp[i]), 'PX', ttl)
  end
  out[#out + 1] = ok[i] and 1 or 0
  out[#out + 1] = charge and 1 or 0
  out[#out + 1] = debt[i]
end
return out
";

pub struct RedisBuckets {
    redis: Arc<Redis>,
    script: Script,
    cluster: bool,
}

impl RedisBuckets {
    pub fn new(redis: Arc<Redis>, cluster: bool) -> Self {
        Self {
            redis,
            script: Script::new(SCRIPT),
            cluster,
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

    /// Charge one request; `policies[i]` is the policy of `charges[i]`.
    pub async fn charge(
        &self,
        policies: &[&Policy],
        charges: &[Charge],
    ) -> Result<Vec<Charged>, Error> {
        if !self.cluster {
            let all: Vec<usize> = (0..charges.len()).collect();
            return self.run(policies, charges, &all).await;
        }
        let mut out = vec![
            Charged {
                admitted: true,
                charged: false,
                debt: 0,
            };
            charges.len()
        ];
        let mut done = vec![false; charges.len()];
        for i in 0..charges.len() {
            if done[i] {
                continue;
            }
            let group: Vec<usize> = (i..charges.len())
                .filter(|&j| charges[j].identity == charges[i].identity)
                .collect();
            for (j, charged) in group.iter().zip(self.run(policies, charges, &group).await?) {
                out[*j] = charged;
                done[*j] = true;
            }
        }
        Ok(out)
    }

    /// One script over the buckets `which`.
    async fn run(
        &self,
        policies: &[&Policy],
        charges: &[Charge],
        which: &[usize],
    ) -> Result<Vec<Charged>, Error> {
        let mut invocation = self.script.prepare_invoke();
        for &i in which {
            let p = policies[i];
            invocation
                .key(
                    self.redis
                        .key(&format!("rl:{{{}}}:{}", charges[i].identity, p.name)),
                )
                .arg(p.cost)
                .arg(p.refill)
                .arg(p.capacity)
                .arg(if p.report_only { 0 } else { 1 });
        }
        let flat: Vec<i64> = self
            .redis
            .call("ratelimit", |mut conn| async move {
                invocation.invoke_async(&mut conn).await
            })
            .await?;
        if flat.len() != which.len() * 3 {
            return Err(Error::Redis(redis::RedisError::from((
                redis::ErrorKind::TypeError,
                "ratelimit script returned an unexpected shape",
            ))));
        }
        Ok(flat
            .chunks_exact(3)
            .map(|c| Charged {
                admitted: c[0] == 1,
                charged: c[1] == 1,
                debt: u64::try_from(c[2]).unwrap_or(0),
            })
            .collect())
    }
}
