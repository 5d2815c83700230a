-- wrk script: Deposit 1 into a uniformly random account among w0..w(N-1), N = $MNEME_ACCOUNTS or 10000.
local accounts = tonumber(os.getenv("MNEME_ACCOUNTS") or "10000")
math.randomseed(os.time())
request = function()
  return wrk.format("POST", "/v1/entities/bank-account/w" .. math.random(0, accounts - 1), nil, '{"type":"Deposit","amount":1}')
end
