package clientapi

import "github.com/agentspace/agentspace/config"

// Placeholder: replaced by the rate limiter and shared-secret registration work.
type rateLimiter struct{}

func newRateLimiter(config.RateLimitConfig) *rateLimiter { return &rateLimiter{} }

type nonceStore struct{}

func newNonceStore() *nonceStore { return &nonceStore{} }
