-- wrk script: Deposit 1 into a uniformly random account among w0..w9999.
math.randomseed(os.time())
request = function()
  return wrk.format("POST", "/v1/entities/bank-account/w" .. math.random(0, 9999), nil, '{"type":"Deposit","amount":1}')
end
