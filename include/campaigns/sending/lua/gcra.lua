--[[
gcra.lua - the global SES send-rate limiter (GCRA), shared by every worker of one SES account+region.

KEYS[1]  TAT key (campaigns.ratelimit.limiter_key): the theoretical arrival time of the next free slot,
         integer microseconds on the Redis clock. Expires a second after the TAT has passed (an expired key
         and a TAT in the past mean the same thing: the limiter is idle).
KEYS[2]  penalty key (KEYS[1] .. ":penalty"): a factor in (0, 1] that scales the rate down while SES answers
         TooManyRequests; it expires on its own, which is how the rate recovers.

ARGV[1]  operation: "reserve" or "throttle"

reserve  ARGV[2]  emission interval at the full rate, integer microseconds (ceil(1e6 / rate))
         ARGV[3]  burst, integer >= 1: how many slots may start back-to-back after an idle period
         ARGV[4]  count, integer >= 1 (default 1): consecutive slots reserved at once, interval_us apart from
                  slot_us (one round trip for several sends when the rate is high)
         returns  {slot_us, wait_us, now_us, interval_us, factor}
                  slot_us, now_us: Redis TIME in microseconds; wait_us = slot_us - now_us >= 0;
                  interval_us: the interval this reservation used (penalty applied); factor: a string.
throttle ARGV[2]  factor in (0, 1]
         ARGV[3]  penalty length, integer milliseconds
         returns  {factor, ttl_ms}: the factor now in force (a string) and how long it lasts.

Why it is shaped so:
- redis.call('TIME') is the only clock: worker clocks drift and skew, the Redis clock is one clock for all.
  (Scripts replicate their effects, so a non-deterministic TIME before a write is allowed.)
- "reserve" always takes the next slot and says how long to wait, so callers sleep once instead of polling.
- Everything returned is an integer or a string: Redis truncates Lua numbers in replies, and
  tostring() of a microsecond timestamp would print it with 14 significant digits, so values are
  written with string.format('%.0f').
- The penalty is read inside the same script as the reservation, so a throttle is seen atomically by
  every worker's next reservation.
]]

local tat_key = KEYS[1]
local penalty_key = KEYS[2]
local op = ARGV[1]

local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- The factor in force and its text; a missing or corrupt penalty means the full rate.
local function current_penalty()
  local raw = redis.call('GET', penalty_key)
  local factor = tonumber(raw)
  if factor == nil or factor <= 0 or factor > 1 then
    return 1, '1'
  end
  return factor, raw
end

if op == 'reserve' then
  local interval = tonumber(ARGV[2])
  local burst = tonumber(ARGV[3])
  local count = tonumber(ARGV[4] or '1')
  if interval == nil or interval < 1 or burst == nil or burst < 1 or count == nil or count < 1 then
    return redis.error_reply('ERR gcra: reserve needs interval_us >= 1, burst >= 1 and count >= 1')
  end

  local now = now_us()
  local factor, factor_text = current_penalty()
  local step = math.ceil(interval / factor)

  local tat = tonumber(redis.call('GET', tat_key)) or now
  if tat < now then
    tat = now
  end
  -- Up to `burst` slots may share one instant after an idle period; after that, one slot per step.
  -- The tolerance uses the full-rate interval, not the penalised step: a tolerance that grew with the step
  -- would reach back past slots already handed out and give the same instant twice.
  local slot = tat - (burst - 1) * interval
  if slot < now then
    slot = now
  end
  local new_tat = tat + count * step
  -- Keep the key only while its TAT is in the future (+1 s so a slow reply cannot race the expiry).
  local ttl_ms = math.ceil((new_tat - now) / 1000) + 1000
  redis.call('SET', tat_key, string.format('%.0f', new_tat), 'PX', string.format('%.0f', ttl_ms))
  return {slot, slot - now, now, step, factor_text}
end

if op == 'throttle' then
  local factor = tonumber(ARGV[2])
  local ttl_ms = tonumber(ARGV[3])
  if factor == nil or factor <= 0 or factor > 1 or ttl_ms == nil or ttl_ms < 1 then
    return redis.error_reply('ERR gcra: throttle needs 0 < factor <= 1 and ttl_ms >= 1')
  end
  -- Many workers see the same burst of TooManyRequests at once: keep the lowest factor and the longest
  -- remaining time instead of compounding, or one burst would collapse the rate to nothing.
  local current, current_text = current_penalty()
  local text = ARGV[2]
  if current <= factor then
    factor = current
    text = current_text
  end
  local remaining = redis.call('PTTL', penalty_key)
  if current < 1 and remaining > ttl_ms then
    ttl_ms = remaining
  end
  redis.call('SET', penalty_key, text, 'PX', string.format('%.0f', ttl_ms))
  return {text, ttl_ms}
end

return redis.error_reply('ERR gcra: unknown operation ' .. tostring(op))
