const ws = new WebSocket('ws://localhost:3001/ws');
ws.onopen = () => {
  ws.send(JSON.stringify({type: 'join', room: 'demo-room', token: 'AGENT_TOKEN'}));
};
ws.onmessage = (msg) => console.log('Received:', msg.data);
