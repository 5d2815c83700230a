-- wrk script: Deposit 1 into accounts w0..w(N-1) (round robin), N = $MNEME_ACCOUNTS or 10000.
local accounts = tonumber(os.getenv("MNEME_ACCOUNTS") or "10000")
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", "/v1/entities/bank-account/w" .. (counter % accounts), nil, '{"type":"Deposit","amount":1}')
end
