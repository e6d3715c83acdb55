package clientapi

// Placeholder: replaced by the rooms endpoints work.
func (a *API) registerRooms(rt routes) {}
