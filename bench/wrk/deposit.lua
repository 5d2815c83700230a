-- wrk script: Deposit 1 into accounts w0..w9999 (round robin).
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("POST", "/v1/entities/bank-account/w" .. (counter % 10000), nil, '{"type":"Deposit","amount":1}')
end
