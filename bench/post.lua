-- wrk script for the echo scenario: POST a 4 KiB body.
wrk.method = "POST"
wrk.body = string.rep("b", 4096)
wrk.headers["Content-Type"] = "application/octet-stream"
