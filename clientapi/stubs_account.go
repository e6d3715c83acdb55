package clientapi

// Placeholder: replaced by the accounts work (register, login, devices, profile).
func (a *API) registerAccount(rt routes) {}
