package clientapi

// Placeholder: replaced by the ephemeral/account-data/push-rules work.
func (a *API) registerEphemeral(rt routes) {}
func (a *API) registerDiscovery(rt routes) {}
